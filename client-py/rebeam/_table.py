"""Tables (ETS): node-local shared key-value tables owned by a process.

Values are copied in and out (a reader never sees a writer's later mutation); reads do not
go through any process, so many actors read at once."""

from __future__ import annotations

import bisect
import pickle
import threading
from collections.abc import Hashable, Iterator
from typing import Any, Literal

from . import _cleanup
from ._errors import Error, NameTaken
from ._native import native

Kind = Literal["set", "ordered_set", "bag", "duplicate_bag"]
Access = Literal["public", "protected", "private"]
KINDS = ("set", "ordered_set", "bag", "duplicate_bag")
ACCESS = ("public", "protected", "private")
_IMMUTABLE = (type(None), bool, int, float, str, bytes)

_tables: dict[str, Table] = {}
_tables_lock = threading.Lock()


def _freeze(value: Any) -> Any:
    if type(value) in _IMMUTABLE:
        return value
    return _Frozen(pickle.dumps(value, protocol=5))


def _thaw(stored: Any) -> Any:
    return pickle.loads(stored.data) if type(stored) is _Frozen else stored


class _Frozen:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is _Frozen and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


class TableError(Error):
    """A table operation was refused: deleted table, or access rights."""


class Table:
    """A shared table: ``set`` and ``ordered_set`` map a key to one value; ``bag`` keeps
    distinct values per key and ``duplicate_bag`` every value inserted.

    ``access``: ``public`` (anyone reads and writes), ``protected`` (the owner writes,
    anyone reads; the default) or ``private`` (owner only). The table is deleted when its
    owner exits, unless ``heir`` names a live process, which then becomes the owner and gets
    the message ``("table_transfer", name, old_owner, heir_data)``."""

    def __init__(self, name: str, kind: Kind = "set", access: Access = "protected",
                 heir: Any = None, heir_data: Any = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"table {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if access not in ACCESS:
            raise ValueError(f"table {name!r}: access must be one of {ACCESS}, got {access!r}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a table name must be a non-empty str, got {name!r}")
        self.name = name
        self.kind: Kind = kind
        self.access: Access = access
        self.owner = native.mark_cleanup()
        self.heir = heir
        self.heir_data = heir_data
        self._data: dict[Hashable, Any] = {}
        self._order: list[Any] = []
        self._write = threading.Lock()
        self._deleted = False
        with _tables_lock:
            if name in _tables:
                raise NameTaken(name, _tables[name].owner)
            _tables[name] = self

    def __reduce__(self) -> tuple[Any, ...]:
        return (table, (self.name,))

    def __repr__(self) -> str:
        return f"<Table {self.name!r} {self.kind} {self.access} owner={self.owner}>"

    # -- access checks -----------------------------------------------------------------------

    def _check(self, write: bool) -> None:
        if self._deleted:
            raise TableError(f"table {self.name!r} was deleted")
        if self.access == "public":
            return
        if self.access == "protected" and not write:
            return
        if native.current_process() != self.owner:
            verb = "write to" if write else "read"
            raise TableError(f"only the owner {self.owner} may {verb} {self.access} table "
                             f"{self.name!r}")

    # -- writes ------------------------------------------------------------------------------

    def insert(self, key: Hashable, value: Any) -> None:
        """Stores ``value`` under ``key`` (replacing it in a set, adding to it in a bag)."""
        self._check(write=True)
        frozen = _freeze(value)
        with self._write:
            self._insert(key, frozen)

    def _insert(self, key: Hashable, frozen: Any) -> None:
        if self.kind in ("set", "ordered_set"):
            if self.kind == "ordered_set" and key not in self._data:
                bisect.insort(self._order, key)
            self._data[key] = frozen
            return
        values = self._data.setdefault(key, [])
        if self.kind == "duplicate_bag" or frozen not in values:
            values.append(frozen)

    def insert_new(self, key: Hashable, value: Any) -> bool:
        """Stores ``value`` only if ``key`` is absent; returns whether it did."""
        self._check(write=True)
        frozen = _freeze(value)
        with self._write:
            if key in self._data:
                return False
            self._insert(key, frozen)
            return True

    def delete(self, key: Hashable) -> None:
        """Removes everything under ``key``."""
        self._check(write=True)
        with self._write:
            if self._data.pop(key, _MISSING) is not _MISSING and self.kind == "ordered_set":
                self._order.pop(bisect.bisect_left(self._order, key))

    def delete_value(self, key: Hashable, value: Any) -> None:
        """Removes ``value`` from a bag's entry under ``key`` (every copy of it)."""
        self._check(write=True)
        if self.kind not in ("bag", "duplicate_bag"):
            raise TableError(f"delete_value is for bags; table {self.name!r} is a {self.kind}")
        frozen = _freeze(value)
        with self._write:
            values = [v for v in self._data.get(key, []) if v != frozen]
            if values:
                self._data[key] = values
            else:
                self._data.pop(key, None)

    def update_counter(self, key: Hashable, increment: int = 1, default: int = 0) -> int:
        """Adds ``increment`` to the integer under ``key`` atomically; returns the result."""
        self._check(write=True)
        if self.kind not in ("set", "ordered_set"):
            raise TableError(f"update_counter needs a set; table {self.name!r} is a {self.kind}")
        with self._write:
            current = self._data.get(key, default)
            if type(current) is not int:
                raise TableError(f"the value under {key!r} is not an int")
            if key not in self._data and self.kind == "ordered_set":
                bisect.insort(self._order, key)
            self._data[key] = current + increment
            return current + increment

    def clear(self) -> None:
        """Removes every entry."""
        self._check(write=True)
        with self._write:
            self._data.clear()
            self._order.clear()

    # -- reads -------------------------------------------------------------------------------

    def lookup(self, key: Hashable) -> list[Any]:
        """Every value under ``key``: zero or one for sets, any number for bags."""
        self._check(write=False)
        stored = self._data.get(key, _MISSING)
        if stored is _MISSING:
            return []
        if self.kind in ("set", "ordered_set"):
            return [_thaw(stored)]
        return [_thaw(v) for v in stored]

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value under ``key`` in a set, or ``default``."""
        found = self.lookup(key)
        return found[0] if found else default

    def __getitem__(self, key: Hashable) -> Any:
        found = self.lookup(key)
        if not found:
            raise KeyError(key)
        return found[0] if self.kind in ("set", "ordered_set") else found

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.insert(key, value)

    def __delitem__(self, key: Hashable) -> None:
        self.delete(key)

    def __contains__(self, key: object) -> bool:
        self._check(write=False)
        return key in self._data

    def __len__(self) -> int:
        self._check(write=False)
        if self.kind in ("set", "ordered_set"):
            return len(self._data)
        return sum(len(v) for v in list(self._data.values()))

    def keys(self) -> list[Hashable]:
        """Every key; in key order for an ordered_set."""
        self._check(write=False)
        return list(self._order) if self.kind == "ordered_set" else list(self._data)

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """``(key, value)`` for every entry (one per value in bags)."""
        for key in self.keys():
            for value in self.lookup(key):
                yield key, value

    def first(self) -> Hashable | None:
        """The smallest key of an ordered_set (None when empty)."""
        keys = self.keys()
        return keys[0] if keys else None

    def next(self, key: Hashable) -> Hashable | None:
        """The key after ``key`` in an ordered_set (None at the end)."""
        self._check(write=False)
        if self.kind != "ordered_set":
            raise TableError(f"next() needs an ordered_set; table {self.name!r} is a {self.kind}")
        order = list(self._order)
        i = bisect.bisect_right(order, key)
        return order[i] if i < len(order) else None

    # -- ownership ---------------------------------------------------------------------------

    def give_away(self, pid: Any, data: Any = None) -> None:
        """Makes ``pid`` the owner; it gets ``("table_transfer", name, old_owner, data)``."""
        if native.current_process() != self.owner:
            raise TableError(f"only the owner {self.owner} may give table {self.name!r} away")
        if not native.is_alive(pid):
            raise TableError(f"cannot give table {self.name!r} to {pid}: it is not alive")
        native.mark_cleanup(pid)
        old, self.owner = self.owner, pid
        native.send(pid, ("table_transfer", self.name, old, data))

    def drop(self) -> None:
        """Deletes the table (owner only, or anyone for a public table)."""
        self._check(write=True)
        self._deleted = True
        with _tables_lock:
            if _tables.get(self.name) is self:
                del _tables[self.name]


_MISSING: Any = object()


def table(name: str) -> Table:
    """The live table named ``name``."""
    try:
        return _tables[name]
    except KeyError:
        raise LookupError(f"no table is named {name!r}") from None


@_cleanup.on_exit
def _owner_exited(pid: Any) -> None:
    for t in [t for t in list(_tables.values()) if t.owner == pid]:
        if t.heir is not None and t.heir != pid and native.is_alive(t.heir):
            native.mark_cleanup(t.heir)
            t.owner = t.heir
            native.send(t.heir, ("table_transfer", t.name, pid, t.heir_data))
            continue
        t._deleted = True
        with _tables_lock:
            if _tables.get(t.name) is t:
                del _tables[t.name]


def _cut(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[:chars] + "…"


def _shown(value: Any, chars: int) -> str:
    try:
        return _cut(repr(value), chars)
    except Exception as e:  # noqa: BLE001 - a value's own __repr__ may raise anything
        return f"<unprintable {type(value).__name__}: {e}>"


_Described = tuple[str, str, str, int, tuple[str, int, int], list[tuple[str, str]]]


def _describe_all(rows: int, chars: int) -> list[_Described]:
    """Every live table of this node, for the dashboard: name, kind, access, size, owner as
    ``(node, incarnation, serial)`` and a preview of at most ``rows`` entries, each side's
    repr cut to ``chars``. A private table shows no entries: only its owner may read them."""
    with _tables_lock:
        tables = list(_tables.values())
    out: list[_Described] = []
    for t in tables:
        if t._deleted:
            continue
        sets = t.kind in ("set", "ordered_set")
        # Copies under the GIL in one step each: a writer on another thread cannot change
        # the dict while it is being copied.
        data = dict(t._data)
        size = len(data) if sets else sum(len(v) for v in data.values())
        preview: list[tuple[str, str]] = []
        if t.access != "private":
            keys = list(t._order[:rows]) if t.kind == "ordered_set" else list(data)[:rows]
            for key in keys:
                stored = data.get(key, _MISSING)
                if stored is _MISSING:
                    continue
                for value in ([stored] if sets else list(stored)):
                    if len(preview) >= rows:
                        break
                    try:
                        thawed = _thaw(value)
                    except Exception as e:  # noqa: BLE001 - unpickling runs app code
                        thawed = f"<cannot unpickle: {e}>"
                    preview.append((_shown(key, chars), _shown(thawed, chars)))
        owner = t.owner
        out.append((t.name, t.kind, t.access, size,
                    (str(owner.node), int(owner.incarnation), int(owner.serial)), preview))
    return out
