"""Chat rooms: one GenServer per room, started on demand under a dynamic supervisor."""

from __future__ import annotations

from collections import deque
from typing import Any

import rebeam

HISTORY = 50


class Room(rebeam.GenServer):
    """A room: members get every message posted; the last messages are kept for late joiners."""

    def init(self, name: str) -> None:
        self.name = name
        self.members: dict[Any, str] = {}
        self.history: deque[tuple[str, str]] = deque(maxlen=HISTORY)
        rebeam.trap_exits(False)

    def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case ("join", user, pid):
                self.members[pid] = user
                rebeam.monitor(pid)
                return list(self.history)
            case ("post", user, text):
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{user} posted an empty message to {self.name}")
                self.history.append((user, text))
                for member in self.members:
                    rebeam.send(member, ("message", self.name, user, text))
                return len(self.history)
            case "members":
                return sorted(self.members.values())
        raise ValueError(f"room {self.name} does not understand {request!r}")

    def handle_info(self, message: Any) -> None:
        if isinstance(message, rebeam.Down):
            self.members.pop(message.pid, None)


class RoomSupervisor(rebeam.DynamicSupervisor):
    """Restarts a crashed room; the lobby starts rooms here."""

    max_restarts = 10
    max_seconds = 1
