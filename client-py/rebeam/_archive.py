"""Application archives: the code blob the controller stores and the nodes unpack.

An archive is a ZIP file (deflate) holding the app directory's regular files under their
relative POSIX paths, ``rebeam.toml`` at the root. Packing is deterministic, so the same
directory always gives the same bytes and so the same content address (the SHA-256 of the
archive, which the controller uses as the code's id):

- entries are sorted by name, directories are implied by the file names;
- every entry has the timestamp 1980-01-01 00:00:00, mode 0644 (0755 when the file is
  executable), no comment and no extra fields;
- caches and version-control folders are left out (:data:`EXCLUDED_DIRS`,
  :data:`EXCLUDED_SUFFIXES`, :data:`EXCLUDED_FILES`).

Packing refuses what a node must never unpack: names that are absolute or contain ``..``,
names that collide once case and Unicode normalization are ignored, symbolic links that
leave the app directory (links inside it are stored as the file they point to), special
files, and archives over the size limit. :func:`unpack` applies the same rules to an archive
received from elsewhere, so a node that uses it never trusts the uploader.

It lives outside :mod:`rebeam.client` (which re-exports it as ``rebeam.client.archive``) so
that a node unpacking an app's code does not import the whole client (asyncio, the gRPC
client, certificates: ~60 ms, paid by the first child a node starts after a failover).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import tomllib
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._app import MANIFEST, Manifest, load_manifest
from ._errors import ArchiveError

#: The controller's default ``--max-code-bytes``; a larger archive is refused before upload.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: Most files in one archive.
MAX_FILES = 10_000
#: Most bytes the files of one archive may take once unpacked.
MAX_UNPACKED_BYTES = 64 * 1024 * 1024
#: Longest entry name, in UTF-8 bytes, and longest single path component.
MAX_NAME_BYTES = 1024
MAX_COMPONENT_BYTES = 255
#: Folders never packed.
EXCLUDED_DIRS = frozenset({
    "__pycache__", ".git", ".hg", ".svn", ".venv", ".tox", ".mypy_cache", ".pytest_cache",
    ".ruff_cache",
})
#: File suffixes never packed (compiled bytecode is rebuilt by the node's interpreter).
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
#: File names never packed.
EXCLUDED_FILES = frozenset({".DS_Store"})

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)
_DRIVE = re.compile(r"^[A-Za-z]:")
_CHUNK = 1 << 16
#: What :mod:`zipfile` raises on damaged bytes besides ``BadZipFile`` (a bad deflate stream,
#: a cut entry, an unknown version or flag, an offset before the start): all mean corrupt.
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError)


@dataclass(frozen=True)
class Archive:
    """A packed application, ready to upload."""

    #: The ZIP bytes.
    data: bytes
    #: Hex SHA-256 of ``data``: the content address the controller gives the code.
    sha256: str
    #: Entry names, sorted.
    names: tuple[str, ...]
    #: The text of ``rebeam.toml``, sent beside the code for the controller to check.
    manifest_toml: str
    #: The manifest as :func:`rebeam._app.load_manifest` read it.
    manifest: Manifest

    @property
    def size(self) -> int:
        """Size of the archive in bytes."""
        return len(self.data)


def check_name(name: str) -> None:
    """Raises :class:`ArchiveError` unless ``name`` is a safe relative POSIX path."""
    shown = repr(name)
    if not name:
        raise ArchiveError("an entry has an empty name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveError(f"{shown}: the name is not valid UTF-8; rename the file") from None
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ArchiveError(f"{shown}: the name contains control characters; rename the file")
    if "\\" in name:
        raise ArchiveError(f"{shown}: the name contains a backslash; use '/' between folders")
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError(f"{shown}: absolute paths are not allowed; names are relative to the app")
    if len(encoded) > MAX_NAME_BYTES:
        raise ArchiveError(f"{shown}: the name is {len(encoded)} bytes; use at most {MAX_NAME_BYTES}")
    for part in name.split("/"):
        if part in ("", "."):
            raise ArchiveError(f"{shown}: empty or '.' path components are not allowed")
        if part == "..":
            raise ArchiveError(f"{shown}: '..' is not allowed; every file must stay inside the app")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ArchiveError(f"{shown}: a path component is over {MAX_COMPONENT_BYTES} bytes")


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class _NameSet:
    """Names seen so far; refuses duplicates (ignoring case and Unicode normalization, which
    would collide on some file systems) and a file that is also a folder."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}
        self._dirs: dict[str, str] = {}

    def add(self, name: str) -> None:
        key = _fold(name)
        if key in self._files:
            other = self._files[key]
            if other == name:
                raise ArchiveError(f"{name!r}: duplicate name")
            raise ArchiveError(f"{name!r}: duplicate name: it is the same as {other!r} on "
                               "file systems that ignore case; rename one of them")
        if key in self._dirs:
            raise ArchiveError(f"{name!r}: the name is both a file and a folder")
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            pkey = _fold(prefix)
            if pkey in self._files:
                raise ArchiveError(f"{prefix!r}: the name is both a file and a folder")
            self._dirs.setdefault(pkey, prefix)
        self._files[key] = name


def build(files: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *, executable: Iterable[str] = (),
          max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Writes ``files`` (name → content) as a deterministic archive, checking every name.

    This is the low-level writer under :func:`pack`; it does not look at the manifest."""
    items = list(files.items()) if isinstance(files, Mapping) else list(files)
    if len(items) > MAX_FILES:
        raise ArchiveError(f"the app has {len(items)} files; use at most {MAX_FILES}")
    seen = _NameSet()
    for name, _ in items:
        check_name(name)
        seen.add(name)
    execs = set(executable)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in sorted(items, key=lambda item: item[0]):
            info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode below is read back
            info.external_attr = (0o100755 if name in execs else 0o100644) << 16
            zf.writestr(info, content)
            if buffer.tell() > max_bytes:
                break
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise ArchiveError(f"the app archive is at least {len(data)} bytes; the limit is {max_bytes} "
                           "(the controller's --max-code-bytes); leave data files out of the app")
    return data


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _collect(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """Reads the app directory's files, following links that stay inside it."""
    root_real = os.path.realpath(root)
    files: dict[str, bytes] = {}
    execs: set[str] = set()
    total = 0

    def add(rel: str, path: str) -> None:
        nonlocal total
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ArchiveError(f"{root / rel}: not a regular file (a device, socket or pipe); "
                               "remove it from the app")
        total += st.st_size
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveError(f"{root}: the app's files take over {MAX_UNPACKED_BYTES} bytes; "
                               "leave data files out of the app")
        if len(files) >= MAX_FILES:
            raise ArchiveError(f"{root}: the app has over {MAX_FILES} files")
        with open(path, "rb") as f:
            files[rel] = f.read()
        if st.st_mode & 0o111:
            execs.add(rel)

    def walk(directory: str, prefix: str, stack: tuple[str, ...]) -> None:
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            name = entry.name
            rel = f"{prefix}{name}"
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise ArchiveError(f"{root / rel}: the file name is not valid UTF-8; "
                                   "rename it") from None
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not _inside(target, root_real):
                    raise ArchiveError(f"{root / rel}: symbolic link to {os.readlink(entry.path)!r} "
                                       "leaves the app directory; copy the file into the app instead")
                if not os.path.exists(target):
                    raise ArchiveError(f"{root / rel}: broken symbolic link to "
                                       f"{os.readlink(entry.path)!r}")
                if os.path.isdir(target):
                    if name in EXCLUDED_DIRS:
                        continue
                    if target in stack:
                        raise ArchiveError(f"{root / rel}: symbolic link loop; remove the link")
                    walk(target, rel + "/", (*stack, target))
                elif not name.endswith(EXCLUDED_SUFFIXES) and name not in EXCLUDED_FILES:
                    add(rel, target)
            elif entry.is_dir(follow_symlinks=False):
                if name not in EXCLUDED_DIRS:
                    walk(entry.path, rel + "/", (*stack, os.path.realpath(entry.path)))
            elif name.endswith(EXCLUDED_SUFFIXES) or name in EXCLUDED_FILES:
                continue
            else:
                add(rel, entry.path)

    walk(str(root), "", (root_real,))
    return files, execs


def _check_sources(root: Path, files: Mapping[str, bytes]) -> None:
    """Compiles every Python file so a syntax error is reported before upload."""
    for name, content in files.items():
        if not name.endswith(".py"):
            continue
        try:
            compile(content, str(root / name), "exec", dont_inherit=True)
        except SyntaxError as e:
            where = f"{root / name}:{e.lineno}" if e.lineno else str(root / name)
            raise ArchiveError(f"{where}: syntax error: {e.msg}") from None
        except ValueError as e:
            raise ArchiveError(f"{root / name}: cannot be compiled: {e}") from None


def pack(directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
         check_syntax: bool = True) -> Archive:
    """Validates the app in ``directory`` and packs it into an :class:`Archive`.

    Raises :class:`rebeam.ManifestError` for a missing or invalid ``rebeam.toml`` and
    :class:`ArchiveError` for anything else that the controller or a node would refuse;
    both messages name the file, and the field where there is one."""
    # Packing is the client's: its manifest checks stay out of a node's imports.
    from .client._manifest import check_manifest

    manifest = load_manifest(Path(directory))
    root = manifest.directory
    files, execs = _collect(root)
    manifest_toml = files[MANIFEST].decode("utf-8")
    check_manifest(manifest, manifest_toml, set(files))
    if check_syntax:
        _check_sources(root, files)
    data = build(files, executable=execs, max_bytes=max_bytes)
    return Archive(data=data, sha256=hashlib.sha256(data).hexdigest(), names=tuple(sorted(files)),
                   manifest_toml=manifest_toml, manifest=manifest)


def _open(data: bytes, max_bytes: int) -> zipfile.ZipFile:
    if len(data) > max_bytes:
        raise ArchiveError(f"the archive is {len(data)} bytes; the limit is {max_bytes}")
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _CORRUPT as e:
        raise ArchiveError(f"the code is not a ZIP archive ({e}); pack it with rebeam.client.pack") from None


def _checked_entries(zf: zipfile.ZipFile, max_files: int, max_unpacked_bytes: int) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ArchiveError(f"the archive has {len(infos)} entries; the limit is {max_files}")
    seen = _NameSet()
    files = []
    declared = 0
    for info in infos:
        name = info.filename
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise ArchiveError(f"{name!r}: symbolic links are not allowed in an archive")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{name!r}: encrypted entries are not allowed")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(f"{name!r}: compression method {info.compress_type} is not supported; "
                               "use deflate")
        if name.endswith("/"):
            check_name(name[:-1])
            continue
        check_name(name)
        seen.add(name)
        declared += info.file_size
        if declared > max_unpacked_bytes:
            raise ArchiveError(f"the archive unpacks to over {max_unpacked_bytes} bytes")
        files.append(info)
    if not any(info.filename == MANIFEST for info in files):
        raise ArchiveError(f"the archive has no {MANIFEST} at its root")
    return files


def read_manifest(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The text of ``rebeam.toml`` inside an archive (after checking every entry name)."""
    with _open(data, max_bytes) as zf:
        _checked_entries(zf, MAX_FILES, MAX_UNPACKED_BYTES)
        try:
            text = zf.read(MANIFEST).decode("utf-8")
            tomllib.loads(text)
        except UnicodeDecodeError:
            raise ArchiveError(f"{MANIFEST}: not valid UTF-8") from None
        except tomllib.TOMLDecodeError as e:
            raise ArchiveError(f"{MANIFEST}: invalid TOML: {e}") from None
        except _CORRUPT as e:
            raise ArchiveError(f"the archive is corrupt: {e}") from None
        return text


def unpack(data: bytes, dest: str | os.PathLike[str], *, sha256: str | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = MAX_FILES,
           max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> list[str]:
    """Checks an archive and unpacks it into the new directory ``dest``; returns the names.

    Trusts nothing in the archive: the hash (when given), every name, the declared and the
    actual sizes are checked, and ``dest`` appears only once everything was written."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise ArchiveError(f"the archive's SHA-256 is {hashlib.sha256(data).hexdigest()}, "
                           f"not {sha256}; fetch the code again")
    dest = Path(dest)
    if dest.exists():
        raise ArchiveError(f"{dest}: already exists; unpack into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _open(data, max_bytes) as zf:
        infos = _checked_entries(zf, max_files, max_unpacked_bytes)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            written = 0
            for info in infos:
                target = staging.joinpath(*info.filename.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
                size = 0
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    while chunk := src.read(_CHUNK):
                        size += len(chunk)
                        written += len(chunk)
                        if size > info.file_size or written > max_unpacked_bytes:
                            raise ArchiveError(f"{info.filename!r}: unpacks to more bytes than it "
                                               "declares; the archive is corrupt")
                        out.write(chunk)
            os.rename(staging, dest)
        except ArchiveError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except _CORRUPT as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArchiveError(f"the archive is corrupt: {e}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return [info.filename for info in infos]
