"""The lobby: finds or opens rooms by name."""

from __future__ import annotations

from typing import Any

import rebeam

from .rooms import Room


class Lobby(rebeam.GenServer):
    """Maps room names to room processes, opening a room on first use.

    Rooms may run on another node, so the lobby monitors them (a liveness check would only
    see local processes, as OTP's is_process_alive) and forgets a room when it goes down."""

    def init(self) -> None:
        self.rooms: dict[str, rebeam.Pid] = {}

    def handle_call(self, request: Any, sender: rebeam.Sender) -> Any:
        match request:
            case ("room", name):
                pid = self.rooms.get(name)
                if pid is None:
                    pid = rebeam.start_child(rebeam.Global("rooms"), rebeam.child(Room, (name,)))
                    rebeam.monitor(pid)
                    self.rooms[name] = pid
                return pid
            case "rooms":
                return sorted(self.rooms)
        raise ValueError(f"the lobby does not understand {request!r}")

    def handle_info(self, message: Any) -> None:
        if isinstance(message, rebeam.Down):
            self.rooms = {n: p for n, p in self.rooms.items() if p != message.pid}
