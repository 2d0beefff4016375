"""The nodes' peer transport spoken by hand, the way an intruder (or a test) would: the
connection's first bytes, length-prefixed protobuf messages and the handshake of
node/src/cluster/transport/handshake.rs. Messages are encoded by hand (five small ones), so
the tests need no generated code for peer.proto."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
import tempfile

MAGIC = b"RBPEER1\n"
ALPN = "rebeam-peer/1"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _fields(data: bytes) -> dict[int, bytes | int]:
    """The fields of an encoded message (length-delimited and varint ones)."""
    out: dict[int, bytes | int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        if key & 7 == 2:
            length = varint()
            out[key >> 3] = data[i:i + length]
            i += length
        else:
            out[key >> 3] = varint()
    return out


def send_message(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">I", len(body)) + body)


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def recv_message(sock: socket.socket) -> bytes | None:
    """The next message, or None when the node closed the connection."""
    head = _exactly(sock, 4)
    if head is None:
        return None
    return _exactly(sock, struct.unpack(">I", head)[0])


def _transcript(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def connect(address: str, context: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to a node's peer port that has said it is a peer connection."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=host)
    sock.sendall(MAGIC)
    return sock


def connect_unix(path: str) -> socket.socket:
    """A connection to a node's local peer socket (same host, TLS off)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    sock.sendall(MAGIC)
    return sock


def local_socket(address: str) -> str:
    """Where a node whose peer address is the loopback ``address`` takes local peers."""
    return os.path.join(tempfile.gettempdir(), f"rebeam-peer-{address.rsplit(':', 1)[1]}.sock")


def handshake(sock: socket.socket, node: str, secret: str | None) -> str:
    """Says it is ``node``, proving it with ``secret`` (None: no proof, as on TLS); returns
    the node's refusal, or "" when welcomed."""
    challenge = recv_message(sock)
    assert challenge is not None, "the node closed the connection before its challenge"
    server_nonce = _fields(challenge).get(1, b"")
    assert isinstance(server_nonce, bytes)
    nonce = os.urandom(32)
    proof = b""
    if secret is not None:
        proof = hmac.new(secret.encode(), _transcript(b"rebeam-peer-hello", server_nonce, nonce,
                                                       node.encode()), hashlib.sha256).digest()
    send_message(sock, _bytes_field(1, node.encode()) + _bytes_field(2, nonce) + _bytes_field(3, proof))
    welcome = recv_message(sock)
    assert welcome is not None, "the node closed the connection without an answer"
    refused = _fields(welcome).get(1, b"")
    assert isinstance(refused, bytes)
    return refused.decode()


def send_batch(sock: socket.socket, node: str, incarnation: int, serial: int, payload: bytes) -> None:
    """One PeerBatch carrying one PeerSend of ``payload`` (a pickle) to the pid."""
    pid = _bytes_field(1, node.encode()) + _int_field(2, incarnation) + _int_field(3, serial)
    send = _bytes_field(1, pid) + _bytes_field(2, payload)
    frame = _bytes_field(1, send)
    send_message(sock, _bytes_field(1, frame))


def closed(sock: socket.socket) -> bool:
    """Whether the node closed the connection (reads until the end or an error)."""
    try:
        while sock.recv(4096):
            pass
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    return True
