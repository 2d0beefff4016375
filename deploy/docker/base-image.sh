#!/usr/bin/env bash
# Builds the local Debian base image the Dockerfile starts from when no registry is reachable:
# debootstrap (bookworm, minbase) + `docker import`. The tag is a hash of this script, so a
# machine that already has it skips the work. Prints the tag.
set -euo pipefail
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the runtime stage needs, so it installs nothing itself: CPython 3.11 and its shared
# library (the node embeds it), tini as PID 1.
INCLUDE=python3.11,libpython3.11,tini,ca-certificates
here=$(cd "$(dirname "$0")" && pwd)
hash=$( (cat "$0"; echo "$SUITE $INCLUDE") | sha256sum | cut -c1-12)
tag="rebeam-base:bookworm-$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
root=$(mktemp -d "${TMPDIR:-/tmp}/rebeam-base.XXXXXX")
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >&2
# Package caches and lists are dead weight in an image.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/var/log/*
tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "$tag"
