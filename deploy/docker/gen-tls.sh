#!/usr/bin/env bash
# Writes a private CA and a certificate per compose member into DIR (default
# deploy/docker/tls, never committed; `make compose-env` runs it), in the layout
# docker-compose.yml mounts:
#   DIR/ca/ca.crt                          the CA, for clients (REBEAM_CA; client.env names it)
#   DIR/<service>/{tls.crt,tls.key,ca.crt} one member each, as a cert-manager Secret holds them
# Controllers carry urn:rebeam:controller:<ordinal+1>, nodes urn:rebeam:node:<name>, each
# with its compose service name as DNS SAN (docs/tls.md). The CA key stays in DIR/ca-key and
# is needed only to add members. A DIR that already holds a CA is kept as it is.
#
#   deploy/docker/gen-tls.sh [DIR] [CONTROLLERS] [NODES] [DAYS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/tls}
controllers=${2:-3}
nodes=${3:-3}
days=${4:-365}
if [ -s "$dir/ca/ca.crt" ]; then
    echo "$dir already holds a CA; remove it to make new certificates"
    exit 0
fi
command -v openssl >/dev/null || { echo "openssl is missing" >&2; exit 1; }
# Only the owner can reach anything below DIR; the containers (uid 10001) see just the
# member directory mounted into them, which is why the files themselves are world-readable.
mkdir -p "$dir/ca" "$dir/ca-key"
chmod 700 "$dir" "$dir/ca-key"
chmod 755 "$dir/ca"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/CN=rebeam compose CA" -keyout "$dir/ca-key/ca.key" -out "$dir/ca/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null

member() {  # service, URI SAN
    local out="$dir/$1"
    mkdir -p "$out"
    chmod 755 "$out"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
    openssl x509 -req -in "$out/tls.csr" -CA "$dir/ca/ca.crt" -CAkey "$dir/ca-key/ca.key" \
        -CAcreateserial -days "$days" -out "$out/tls.crt" -extfile <(printf '%s\n' \
        "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=URI:$2,DNS:$1") 2>/dev/null
    rm -f "$out/tls.csr"
    cp "$dir/ca/ca.crt" "$out/ca.crt"
    chmod 644 "$out/tls.crt" "$out/tls.key" "$out/ca.crt"
}
for i in $(seq 0 $((controllers - 1))); do
    member "controller-$i" "urn:rebeam:controller:$((i + 1))"
done
for i in $(seq 1 "$nodes"); do
    member "node-$i" "urn:rebeam:node:node-$i"
done
rm -f "$dir/ca/ca.srl" "$dir/ca-key/ca.srl"
echo "wrote a CA and $controllers controller and $nodes node certificates into $dir"
