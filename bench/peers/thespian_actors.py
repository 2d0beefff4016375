"""Thespian actor classes for the bench (an importable module, as Thespian's process-based
system bases need). Actors talk to actors with self.send; the client uses ActorSystem.ask."""

from __future__ import annotations

import os
import time
from typing import Any

from thespian.actors import Actor, ActorAddress, ChildActorExited

from common import PAYLOAD


class Echo(Actor):
    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, tuple) and message[0] == "ping":
            self.send(sender, message[1])
        elif message == "crash":
            os._exit(1)  # a hard crash of the actor's process


class Idle(Actor):
    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        pass


class Pinger(Actor):
    """("run", echo, n): n sequential ping round trips to echo; replies the samples in µs."""

    def __init__(self) -> None:
        super().__init__()
        self.requester: ActorAddress | None = None
        self.echo: ActorAddress | None = None
        self.left = 0
        self.t0 = 0
        self.samples: list[float] = []

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, tuple) and message[0] == "run":
            _, self.echo, self.left = message
            self.requester, self.samples = sender, []
            self.t0 = time.perf_counter_ns()
            self.send(self.echo, ("ping", PAYLOAD))
        elif isinstance(message, bytes):
            self.samples.append((time.perf_counter_ns() - self.t0) / 1000)
            if message != PAYLOAD:
                self.samples.append(-1.0)  # flagged; the client asserts on it
            self.left -= 1
            if self.left > 0:
                self.t0 = time.perf_counter_ns()
                self.send(self.echo, ("ping", PAYLOAD))
            else:
                self.send(self.requester, self.samples)


class Counter(Actor):
    """Counts ("inc", payload); ("count",) replies the count; ("expect", n, notify) makes it
    send ("done", count) to notify once n have arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.expected = -1
        self.notify: ActorAddress | None = None

    def _check(self) -> None:
        if self.notify is not None and self.count == self.expected:
            self.send(self.notify, ("done", self.count))
            self.notify = None

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if not isinstance(message, tuple):
            return
        if message[0] == "inc":
            self.count += 1
            self._check()
        elif message[0] == "count":
            self.send(sender, self.count)
        elif message[0] == "expect":
            _, self.expected, self.notify = message
            self._check()


class Blaster(Actor):
    """("blast", counter, n): n one-way sends, then asks counter for its count; replies it."""

    def __init__(self) -> None:
        super().__init__()
        self.requester: ActorAddress | None = None

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, tuple) and message[0] == "blast":
            _, counter, n = message
            self.requester = sender
            msg = ("inc", PAYLOAD)
            for _ in range(n):
                self.send(counter, msg)
            self.send(counter, ("count",))
        elif isinstance(message, int) and self.requester is not None:
            self.send(self.requester, message)


class Fanner(Actor):
    """("fan", targets): pings every target at once, replies the list of replies."""

    def __init__(self) -> None:
        super().__init__()
        self.requester: ActorAddress | None = None
        self.left = 0
        self.replies: list[bytes] = []

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, tuple) and message[0] == "fan":
            targets = message[1]
            self.requester, self.left, self.replies = sender, len(targets), []
            for t in targets:
                self.send(t, ("ping", PAYLOAD))
        elif isinstance(message, bytes):
            self.replies.append(message)
            self.left -= 1
            if self.left == 0:
                self.send(self.requester, self.replies)


class Sender(Actor):
    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if isinstance(message, tuple) and message[0] == "go":
            _, receivers, per_pair = message
            msg = ("inc", PAYLOAD)
            for _ in range(per_pair):
                for r in receivers:
                    self.send(r, msg)


class Coordinator(Actor):
    """("run", senders, receivers, per_pair): starts the senders, replies the counts once
    every receiver has reported its expected count."""

    def __init__(self) -> None:
        super().__init__()
        self.requester: ActorAddress | None = None
        self.left = 0
        self.counts: list[int] = []

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if not isinstance(message, tuple):
            return
        if message[0] == "run":
            _, senders, receivers, per_pair = message
            self.requester, self.left, self.counts = sender, len(receivers), []
            for r in receivers:
                self.send(r, ("expect", len(senders) * per_pair, self.myAddress))
            for s in senders:
                self.send(s, ("go", receivers, per_pair))
        elif message[0] == "done":
            self.counts.append(message[1])
            self.left -= 1
            if self.left == 0:
                self.send(self.requester, self.counts)


class Supervisor(Actor):
    """Parent of one Echo worker: recreates it when Thespian reports ChildActorExited."""

    def __init__(self) -> None:
        super().__init__()
        self.worker: ActorAddress | None = None
        self.restarts = 0

    def receiveMessage(self, message: Any, sender: ActorAddress) -> None:
        if message == "worker?":
            if self.worker is None:
                self.worker = self.createActor(Echo)
            self.send(sender, (self.worker, self.restarts))
        elif isinstance(message, ChildActorExited):
            if message.childAddress == self.worker:
                self.worker = self.createActor(Echo)
                self.restarts += 1
