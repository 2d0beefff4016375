"""The client wire: ``Deliver`` to a node's gateway as length-prefixed messages on a plain
(or TLS) socket, without HTTP/2 (see ``ClientHello`` in proto/rebeam/v1/gateway.proto).

A call from outside the cluster is most of its time in gRPC's machinery; on this wire it is
one ``sendall`` and one ``recv``. The node authorizes each request exactly as the gRPC
``Deliver``, so the two paths differ only in speed. A node that does not speak the wire
(an older version) closes the connection at the hello, and the client uses gRPC for it."""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

MAGIC = b"RBCLNT1\n"
ALPN = "rebeam-client/1"
#: Largest request the node takes (as the gRPC ``Deliver``); larger ones go through gRPC,
#: which refuses them with its own error.
MAX_REQUEST = 4 << 20
#: Largest reply this side reads (a reply is a pickled value, as gRPC's receive limit).
MAX_REPLY = 256 << 20
_LEN = struct.Struct(">I")


_GATEWAY_PB2: Any = None


def _protos() -> Any:
    """The generated gateway messages, imported on first use and then kept (an import
    statement per request shows in a call's time)."""
    global _GATEWAY_PB2
    if _GATEWAY_PB2 is None:
        from ._proto import gateway_pb2

        _GATEWAY_PB2 = gateway_pb2
    return _GATEWAY_PB2


class Unreachable(Exception):
    """The connection failed. ``sent``: the request may have reached the node."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class NotSpoken(Exception):
    """The node closed the connection at the hello: it does not speak the wire."""


class Refused(Exception):
    """The node refused the request with a gRPC status (code number and message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Tls:
    """How to wrap the socket: the CA to verify the node with, the client's certificate and
    key (PEM bytes, each optional)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def _context(tls: Tls) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=tls.ca.decode() if tls.ca else None)
    ctx.set_alpn_protocols([ALPN])
    if tls.cert and tls.key:
        # ssl loads a certificate only from a file: a private one, removed at once.
        fd, path = tempfile.mkstemp(prefix="rebeam-client-", suffix=".pem")
        try:
            os.write(fd, tls.cert + b"\n" + tls.key)
            os.close(fd)
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
    return ctx


class Connection:
    """One authorized connection to one node, used by one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        self._next_id = 1
        # The socket's timeout as last set: setting it is a system call, made only on change.
        self._timeout: float | None = sock.gettimeout()

    @classmethod
    def open(cls, dial: str, server_name: str, token: str, timeout: float,
             tls: Tls | None, contexts: dict[Tls, ssl.SSLContext]) -> Connection:
        """Connects to ``dial`` (``host:port``) and says hello with ``token``."""
        host, _, port = dial.rpartition(":")
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        except (OSError, ValueError) as e:
            raise Unreachable(f"cannot connect to {dial}: {e}", sent=False) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if tls is not None:
                ctx = contexts.get(tls)
                if ctx is None:
                    ctx = contexts[tls] = _context(tls)
                sock = ctx.wrap_socket(sock, server_hostname=server_name)
                if sock.selected_alpn_protocol() != ALPN:
                    sock.close()
                    raise NotSpoken(f"{dial} did not agree to the client wire over TLS")
            else:
                sock.sendall(MAGIC)
            conn = cls(sock)
            from ._proto import gateway_pb2

            conn._write(gateway_pb2.ClientHello(token=token))
            hello = conn._read()
        except (ssl.SSLError, OSError, Unreachable) as e:
            sock.close()
            raise NotSpoken(f"{dial} did not answer the client wire's hello: {e}") from None
        if hello.code != 0:
            sock.close()
            raise Refused(hello.code, hello.message)
        return conn

    def deliver(self, request: Any, traceparent: str, timeout: float) -> Any:
        """Sends one ``DeliverRequest`` and returns its ``DeliverReply``."""
        gateway_pb2 = _protos()

        ident = self._next_id
        self._next_id += 1
        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout
        self._write(gateway_pb2.ClientRequest(id=ident, deliver=request, traceparent=traceparent))
        while True:
            reply = self._read()
            if reply.id != ident:
                continue  # a reply to a request given up on earlier
            if reply.code != 0:
                raise Refused(reply.code, reply.message)
            return reply.reply

    def deliver_many(self, requests: list[Any], traceparent: str, timeout: float,
                     window: int) -> list[Any]:
        """Sends ``requests`` with at most ``window`` of them awaiting replies at once, several
        frames per write, and returns each one's ``ClientReply`` (refusals included) in the
        order of ``requests``: one round trip per window instead of one per request."""
        gateway_pb2 = _protos()

        if timeout != self._timeout:
            self._sock.settimeout(timeout)
            self._timeout = timeout
        first = self._next_id
        self._next_id += len(requests)
        out: list[Any] = [None] * len(requests)
        sent = done = 0
        while done < len(requests):
            if sent < len(requests) and sent - done < window:
                upto = min(len(requests), done + window)
                frames = bytearray()
                for k in range(sent, upto):
                    body = gateway_pb2.ClientRequest(id=first + k, deliver=requests[k],
                                                     traceparent=traceparent).SerializeToString()
                    frames += _LEN.pack(len(body))
                    frames += body
                try:
                    self._sock.sendall(frames)
                except OSError as e:
                    raise Unreachable(f"the connection broke while sending: {e}", sent=True) from None
                sent = upto
            reply = self._read()
            k = reply.id - first
            if 0 <= k < sent and out[k] is None:
                out[k] = reply
                done += 1
        return out

    def closed_by_peer(self) -> bool:
        """Whether the node closed this idle connection (it stopped or restarted): checked
        before reusing it, so that a request is never sent into a connection known dead."""
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            if not readable:
                return False
            self._sock.settimeout(0)
            self._timeout = 0
            chunk = self._sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError):
            return False  # TLS records without data (e.g. session tickets)
        except OSError:
            return True
        if not chunk:
            return True
        self._buf += chunk  # a late reply to a request given up on: skipped by its id
        return False

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _write(self, message: Any) -> None:
        body = message.SerializeToString()
        try:
            self._sock.sendall(_LEN.pack(len(body)) + body)
        except OSError as e:
            # A partial write may have reached the node: counted as sent.
            raise Unreachable(f"the connection broke while sending: {e}", sent=True) from None

    def _read(self) -> Any:
        reply_type = _protos().ClientReply
        buf = self._buf
        while True:
            if len(buf) >= 4:
                (n,) = _LEN.unpack_from(buf)
                if n > MAX_REPLY:
                    raise Unreachable(f"a reply of {n} bytes is over the limit", sent=True)
                if len(buf) >= 4 + n:
                    reply = reply_type.FromString(bytes(buf[4:4 + n]))
                    del buf[:4 + n]
                    return reply
            wanted = 4 + _LEN.unpack_from(buf)[0] - len(buf) if len(buf) >= 4 else 0
            try:
                chunk = self._sock.recv(max(65536, wanted))
            except TimeoutError:
                raise Unreachable("no reply in time", sent=True) from None
            except OSError as e:
                raise Unreachable(f"the connection broke: {e}", sent=True) from None
            if not chunk:
                raise Unreachable("the node closed the connection", sent=True)
            if not buf and len(chunk) >= 4 and len(chunk) == 4 + _LEN.unpack_from(chunk)[0]:
                # The usual case: one whole reply in one read, parsed where it lies.
                return reply_type.FromString(memoryview(chunk)[4:])
            buf += chunk


class Pool:
    """Idle connections per node address, so that threads sharing a client each use their
    own connection while none is opened per call."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()
        self.contexts: dict[Tls, ssl.SSLContext] = {}

    def take(self, address: str) -> Connection | None:
        """An idle connection to ``address`` that its node has not closed, if there is one."""
        while True:
            with self._lock:
                idle = self._idle.get(address)
                conn = idle.pop() if idle else None
            if conn is None or not conn.closed_by_peer():
                return conn
            conn.close()

    def give(self, address: str, conn: Connection) -> None:
        with self._lock:
            self._idle.setdefault(address, []).append(conn)

    def drop(self, address: str) -> None:
        """Closes the idle connections to ``address`` (its node failed)."""
        with self._lock:
            conns = self._idle.pop(address, [])
        for conn in conns:
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
        for conn in conns:
            conn.close()
