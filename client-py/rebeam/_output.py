"""Inside a node, ``sys.stdout`` and ``sys.stderr`` write through to the node's own streams
as before, and what a process of an application writes is also kept in that app's log on
the node (``rebeam logs``). The node sorts lines by process and app; code outside any app
costs one native call per write."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from ._native import native


class CapturedStream:
    """Wraps a text stream: every write goes to it, then to the node's log capture."""

    def __init__(self, inner: TextIO, fd: int) -> None:
        self._inner = inner
        self._fd = fd

    def write(self, text: str) -> int:
        written = self._inner.write(text)
        native.write_output(self._fd, text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    @property
    def wrapped(self) -> TextIO:
        """The stream this one writes through to."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        # Everything else (flush, fileno, encoding, isatty, buffer, ...) is the real stream's.
        if name == "_inner":  # not set yet (a copy being built): no endless recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"<rebeam captured {self._inner!r}>"


def install() -> None:
    """Wraps ``sys.stdout`` and ``sys.stderr`` (once); the node calls this at start."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, CapturedStream):
            setattr(sys, name, CapturedStream(stream, fd))
