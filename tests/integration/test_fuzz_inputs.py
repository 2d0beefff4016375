"""Property tests (hypothesis) of what nodes and the client read from others: app archives
and manifests. Whatever the bytes, the readers answer with their own error type (never
another exception, never a file outside the destination), and what `build` writes
`unpack` gives back unchanged."""

from __future__ import annotations

import io
import tempfile
import warnings
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rebeam._app import ManifestError, load_manifest
from rebeam.client.archive import ArchiveError, build, read_manifest, unpack

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

MANIFEST = b'[app]\nname = "a"\nversion = "1"\n\n[[children]]\nstart = "m:f"\n'

names = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}){0,2}",
                      fullmatch=True)
hostile_names = st.one_of(
    names,
    st.sampled_from(["../x", "/etc/passwd", "a/../../b", "..", ".", "a\\b", "a\x00b", "", "a//b",
                     "C:/x", "A.py", "a.py", "\u212b", "\u00c5"]),
    st.text(min_size=0, max_size=20),
)


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    """A ZIP written without any of `build`'s checks, as an attacker would."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are part of the attack
        for name, content in entries:
            zf.writestr(zipfile.ZipInfo(name), content)
    return buffer.getvalue()


def assert_inside(root: Path) -> None:
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve()), path


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_as_archives(data: bytes) -> None:
    try:
        read_manifest(data)
    except ArchiveError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        try:
            unpack(data, Path(tmp) / "out")
        except ArchiveError:
            pass
        assert_inside(Path(tmp))


@FUZZ
@given(st.lists(st.tuples(hostile_names, st.binary(max_size=64)), max_size=6),
       st.booleans())
def test_hostile_zips_unpack_inside_the_destination_or_are_refused(
        entries: list[tuple[str, bytes]], with_manifest: bool) -> None:
    if with_manifest:
        entries = [("rebeam.toml", MANIFEST), *entries]
    try:
        data = zip_of(entries)
    except (ValueError, UnicodeEncodeError):
        return  # the zipfile module itself cannot write that name
    with tempfile.TemporaryDirectory() as tmp:
        try:
            unpack(data, Path(tmp) / "out")
        except ArchiveError:
            pass
        assert_inside(Path(tmp))


@FUZZ
@given(st.dictionaries(names, st.binary(max_size=256), max_size=8))
def test_build_then_unpack_gives_the_files_back(files: dict[str, bytes]) -> None:
    files = {**files, "rebeam.toml": MANIFEST}
    try:
        data = build(files)
    except ArchiveError:
        return  # names that collide (a file and a directory, or by case) are refused
    assert build(files) == data, "packing is deterministic"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        got = unpack(data, out)
        assert sorted(got) == sorted(files)
        for name, content in files.items():
            assert (out / name).read_bytes() == content


toml_values = st.one_of(st.integers(-3, 2**40), st.text(max_size=12), st.booleans(),
                        st.lists(st.integers(0, 5), max_size=3), st.floats(allow_nan=True))
child_keys = st.sampled_from(["start", "args", "name", "global", "restart", "shutdown",
                              "placement", "registry", "max_mailbox", "max_mailbox_bytes",
                              "restat", "max_restart"])


def toml_scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return "nan" if value != value else repr(value)
    return repr(value)


@FUZZ
@given(st.dictionaries(child_keys, toml_values, max_size=6))
def test_the_manifest_reader_accepts_or_names_what_is_wrong(child: dict[str, object]) -> None:
    body = "\n".join(f"{k} = {toml_scalar(v)}" for k, v in child.items())
    text = f'[app]\nname = "a"\nversion = "1"\n\n[[children]]\n{body}\n'
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rebeam.toml").write_text(text)
        try:
            manifest = load_manifest(tmp)
        except ManifestError as e:
            assert "rebeam.toml" in str(e)
            return
        entry = manifest.children[0]
        assert set(child) <= {"start", "args", "name", "global", "restart", "shutdown",
                              "placement", "registry", "max_mailbox", "max_mailbox_bytes"}
        for key in ("max_mailbox", "max_mailbox_bytes"):
            assert entry[key] is None or (isinstance(entry[key], int) and entry[key] >= 0)
