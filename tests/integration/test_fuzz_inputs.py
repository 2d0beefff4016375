"""Property tests (hypothesis) of what nodes and the client read from others: app archives
and manifests. Whatever the bytes, the readers answer with their own error type (never
another exception, never a file outside the destination), and what `build` writes
`unpack` gives back unchanged."""

from __future__ import annotations

import io
import json
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
        # JSON's escapes are TOML's, but for DEL, which TOML wants escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
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


# --- Refusals name what is wrong; the packer and the manifest checks raise only their own errors.

APP_KEYS = ["name", "version", "max_restarts", "max_seconds"]
CHILD_KEYS = ["start", "args", "name", "global", "restart", "shutdown", "placement", "registry",
              "max_mailbox", "max_mailbox_bytes"]
keys = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


def manifest_text(app: dict[str, object], child: dict[str, object]) -> str:
    def table(values: dict[str, object]) -> str:
        return "\n".join(f"{k} = {toml_scalar(v)}" for k, v in values.items())
    return f"[app]\n{table(app)}\n\n[[children]]\n{table(child)}\n"


def load_text(text: str) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rebeam.toml").write_text(text)
        return load_manifest(tmp)


VALID_APP: dict[str, object] = {"name": "a", "version": "1"}
VALID_CHILD: dict[str, object] = {"start": "m:f"}


@FUZZ
@given(keys.filter(lambda k: k not in APP_KEYS and k not in CHILD_KEYS), st.booleans(),
       toml_values)
def test_an_unknown_key_is_refused_by_name(key: str, in_child: bool, value: object) -> None:
    app, child = dict(VALID_APP), dict(VALID_CHILD)
    (child if in_child else app)[key] = value
    where = "children[0]" if in_child else "app"
    try:
        load_text(manifest_text(app, child))
    except ManifestError as e:
        assert f"unknown key {where}.{key}" in str(e), str(e)
        assert "rebeam.toml" in str(e)
    else:
        raise AssertionError(f"{where}.{key} was accepted")


# What each key may hold: a value of another TOML type is refused naming the key.
KEY_TYPES: dict[tuple[str, str], tuple[type, ...]] = {
    ("app", "name"): (str,), ("app", "version"): (str,), ("app", "max_restarts"): (int,),
    ("app", "max_seconds"): (int, float),
    ("children[0]", "start"): (str,), ("children[0]", "args"): (list,),
    ("children[0]", "name"): (str,), ("children[0]", "global"): (bool,),
    ("children[0]", "restart"): (str,), ("children[0]", "shutdown"): (int, float, str),
    ("children[0]", "placement"): (str,), ("children[0]", "registry"): (str,),
    ("children[0]", "max_mailbox"): (int,), ("children[0]", "max_mailbox_bytes"): (int,),
}


def type_matches(value: object, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


@FUZZ
@given(st.sampled_from(sorted(KEY_TYPES)), toml_values)
def test_a_value_of_the_wrong_type_is_refused_by_name(where_key: tuple[str, str],
                                                      value: object) -> None:
    where, key = where_key
    kinds = KEY_TYPES[where_key]
    if type_matches(value, kinds):
        return
    app, child = dict(VALID_APP), dict(VALID_CHILD)
    (app if where == "app" else child)[key] = value
    try:
        load_text(manifest_text(app, child))
    except ManifestError as e:
        assert f"{where}.{key} must be" in str(e), str(e)
    else:
        raise AssertionError(f"{where}.{key} = {value!r} was accepted")


escaping_names = st.one_of(
    st.builds(lambda a, b: f"{a}/../{b}", names, names),
    st.builds(lambda a: f"../{a}", names),
    st.builds(lambda a: f"/{a}", names),
    st.builds(lambda a: f"C:/{a}", names),
    st.builds(lambda a, b: f"{a}\\..\\{b}", names, names),
    st.builds(lambda a: f"{a}/..", names),
)


@FUZZ
@given(escaping_names)
def test_a_path_escape_is_refused_naming_the_path(name: str) -> None:
    try:
        build({"rebeam.toml": MANIFEST, name: b"x"})
    except ArchiveError as e:
        assert repr(name) in str(e), str(e)
    else:
        raise AssertionError(f"build accepted {name!r}")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            unpack(zip_of([("rebeam.toml", MANIFEST), (name, b"x")]), Path(tmp) / "out")
        except ArchiveError as e:
            assert repr(name) in str(e), str(e)
        else:
            raise AssertionError(f"unpack accepted {name!r}")
        assert not (Path(tmp) / "out").exists()
        assert_inside(Path(tmp))


@FUZZ
@given(st.dictionaries(names, st.binary(max_size=512), min_size=1, max_size=4),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_damaged_archive_is_refused_with_archive_error_only(
        files: dict[str, bytes], damage: list[tuple[int, int]]) -> None:
    try:
        data = bytearray(build({**files, "rebeam.toml": MANIFEST}))
    except ArchiveError:
        return
    for at, byte in damage:
        data[at % len(data)] = byte
    try:
        read_manifest(bytes(data))
    except ArchiveError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        try:
            unpack(bytes(data), Path(tmp) / "out")
        except ArchiveError:
            pass
        assert_inside(Path(tmp))


manifest_texts = st.builds(
    manifest_text,
    st.fixed_dictionaries({"name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True),
                           "version": st.from_regex(r"[0-9][0-9.]{0,8}", fullmatch=True)}),
    st.fixed_dictionaries({"start": st.just("m:f")},
                          optional={"args": st.lists(st.integers(0, 9), max_size=3),
                                    "restart": st.sampled_from(["permanent", "transient",
                                                                "temporary"]),
                                    "max_mailbox": st.integers(0, 1000)}),
)


@FUZZ
@given(manifest_texts, st.dictionaries(names, st.binary(max_size=64), max_size=4))
def test_the_archive_gives_its_manifest_back(text: str, files: dict[str, bytes]) -> None:
    try:
        data = build({**files, "rebeam.toml": text.encode()})
    except ArchiveError:
        return  # colliding names
    assert read_manifest(data) == text


@FUZZ
@given(st.dictionaries(child_keys, toml_values, max_size=6),
       st.dictionaries(st.sampled_from(APP_KEYS + ["extra"]), toml_values, max_size=4),
       st.sampled_from(["m:f", "pkg.mod:f", ".m:f", "m.:f", "os:getcwd", "nope.x:f", "pkg..m:f"]))
def test_pack_refuses_with_its_own_errors_only(child: dict[str, object], app: dict[str, object],
                                               start: str) -> None:
    """The packer runs the manifest reader, then the controller's extra checks, on whatever a
    user wrote: ManifestError or ArchiveError (naming rebeam.toml), or an archive."""
    from rebeam.client.archive import pack
    text = manifest_text({**VALID_APP, **app}, {"start": start, **child})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "rebeam.toml").write_text(text)
        (root / "m.py").write_text("def f(*a):\n    pass\n")
        (root / "pkg").mkdir()
        (root / "pkg" / "__init__.py").write_text("")
        (root / "pkg" / "mod.py").write_text("def f(*a):\n    pass\n")
        try:
            archive = pack(root)
        except (ManifestError, ArchiveError) as e:
            assert "rebeam.toml" in str(e) or "m.py" in str(e), str(e)
            return
        assert read_manifest(archive.data) == text


# Regressions the properties above found (each failed with another exception type before).

def test_an_entry_flagged_as_patched_data_is_an_archive_error() -> None:
    data = bytearray(build({"rebeam.toml": MANIFEST, "m.py": b"x = 1\n"}))
    central = data.find(b"PK\x01\x02")
    while central >= 0:  # "compressed patched data": zipfile raised NotImplementedError
        data[central + 8] |= 0x20
        central = data.find(b"PK\x01\x02", central + 4)
    for read in (read_manifest, lambda d: unpack(d, Path(tempfile.mkdtemp()) / "out")):
        try:
            read(bytes(data))
        except ArchiveError as e:
            assert "corrupt" in str(e), str(e)
        else:
            raise AssertionError("a patched-data entry was read")


def test_a_relative_start_module_is_refused_by_name() -> None:
    from rebeam.client.archive import pack
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "rebeam.toml").write_text(manifest_text(VALID_APP, {"start": ".m:f"}))
        (root / "m.py").write_text("def f():\n    pass\n")
        try:
            pack(root)  # raised ValueError from the import machinery
        except ManifestError as e:
            assert "children[0].start" in str(e) and "'.m'" in str(e), str(e)
        else:
            raise AssertionError("start = '.m:f' was accepted")
