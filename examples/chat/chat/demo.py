"""A demo conversation, so `rebeam-node --dev --app examples/chat` shows the system at work."""

from __future__ import annotations

from typing import Any

import rebeam

LOBBY = rebeam.Global("lobby")

LINES = [
    ("ann", "hello, is anyone here?"),
    ("bob", "hi ann! the room survives crashes, watch"),
    ("bob", ""),  # an empty post crashes the room; its supervisor restarts it
    ("ann", "still here after the restart"),
]


class Demo(rebeam.GenServer):
    """Joins a room, posts a few lines one tick apart, prints what the room broadcasts."""

    def init(self) -> None:
        # In a cluster the lobby may start on another node a moment later: join on the
        # first tick, not here.
        self.room: rebeam.Pid | None = None
        self.step = 0
        rebeam.send_after(0.2, rebeam.self_pid(), "tick")

    def join(self) -> None:
        try:
            room: rebeam.Pid = rebeam.call(LOBBY, ("room", "general"))
            rebeam.call(room, ("join", "demo", rebeam.self_pid()))
        except rebeam.Exit:
            # The room just crashed and the lobby (on another node, maybe) has not seen it go
            # yet: try again on the next tick rather than crash and replay the demo.
            self.room = None
            return
        self.room = room

    def handle_info(self, message: Any) -> None:
        match message:
            case ("message", room, user, text):
                print(f"[{room}] {user}: {text}", flush=True)
            case "tick":
                if self.room is None:
                    self.join()
                if self.room is None:
                    rebeam.send_after(0.2, rebeam.self_pid(), "tick")
                    return
                self.post_next()

    def post_next(self) -> None:
        if self.step >= len(LINES):
            print(f"demo done; rooms open: {rebeam.call(LOBBY, 'rooms')}", flush=True)
            rebeam.stop("normal")
            return
        user, text = LINES[self.step]
        self.step += 1
        try:
            rebeam.call(rebeam.call(LOBBY, ("room", "general")), ("post", user, text))
        except rebeam.Exit as e:
            print(f"the room crashed ({e.reason}); its supervisor restarts it", flush=True)
            self.join()
        rebeam.send_after(0.2, rebeam.self_pid(), "tick")
