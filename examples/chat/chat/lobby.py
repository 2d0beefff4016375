"""The lobby: finds or opens rooms by name."""

from __future__ import annotations

from typing import Any

import rebeam

from .rooms import Room


class Lobby(rebeam.GenServer):
    """Maps room names to room processes, opening a room on first use."""

    def init(self) -> None:
        self.rooms: dict[str, Any] = {}

    def handle_call(self, request: Any, sender: Any) -> Any:
        match request:
            case ("room", name):
                pid = self.rooms.get(name)
                if pid is None or not rebeam.is_alive(pid):
                    pid = rebeam.start_child(rebeam.Global("rooms"), rebeam.child(Room, (name,)))
                    self.rooms[name] = pid
                return pid
            case "rooms":
                return sorted(n for n, p in self.rooms.items() if rebeam.is_alive(p))
        raise ValueError(f"the lobby does not understand {request!r}")
