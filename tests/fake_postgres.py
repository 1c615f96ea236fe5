"""A loopback server that speaks just enough of PostgreSQL's protocol (v3) to refuse a password.

The test server trusts every local connection, so a wrong password cannot be
brought about there, and the shared server's authentication rules are not
ours to change. This one answers as PostgreSQL does for `password`
authentication: it declines SSL and GSS encryption, asks for the password in
clear text, reads it, and answers with the FATAL error a wrong password gets
(SQLSTATE 28P01). It counts the startup messages it received: each is one
connection attempt of the client (a libpq ping included).
"""

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSS_ENCRYPTION_REQUEST = 80877104
PROTOCOL_3 = 196608
ASK_CLEARTEXT_PASSWORD = 3
WRONG_PASSWORD = "28P01"
ACCEPT_TIMEOUT_S = 0.2
CLIENT_TIMEOUT_S = 10


@dataclass
class PasswordRefusingServer:
    listener: socket.socket
    startups: int = 0
    passwords: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(CLIENT_TIMEOUT_S)
            with client, suppress(OSError):
                self.refuse(client)

    def refuse(self, client: socket.socket) -> None:
        user = self.read_startup(client)
        if user is None:
            return
        self.startups += 1
        client.sendall(b"R" + struct.pack("!ii", 8, ASK_CLEARTEXT_PASSWORD))
        kind, body = read_message(client)
        if kind != b"p":
            return
        self.passwords.append(body.rstrip(b"\0").decode())
        client.sendall(error_response(f'password authentication failed for user "{user}"'))

    def read_startup(self, client: socket.socket) -> str | None:
        """The user named by the startup message, after declining encryption requests."""
        while True:
            (length,) = struct.unpack("!i", receive(client, 4))
            body = receive(client, length - 4)
            (code,) = struct.unpack("!i", body[:4])
            if code in (SSL_REQUEST, GSS_ENCRYPTION_REQUEST):
                client.sendall(b"N")
                continue
            if code != PROTOCOL_3:
                return None
            words = body[4:].split(b"\0")
            parameters = dict(zip(words[::2], words[1::2], strict=False))
            return parameters.get(b"user", b"").decode()


def receive(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    return data


def read_message(client: socket.socket) -> tuple[bytes, bytes]:
    kind = receive(client, 1)
    (length,) = struct.unpack("!i", receive(client, 4))
    return kind, receive(client, length - 4)


def error_response(message: str) -> bytes:
    fields = {b"S": "FATAL", b"V": "FATAL", b"C": WRONG_PASSWORD, b"M": message}
    body = b"".join(code + text.encode() + b"\0" for code, text in fields.items()) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


@contextmanager
def password_refusing_server() -> Iterator[PasswordRefusingServer]:
    """The server, listening on a free loopback port, for as long as the block runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(ACCEPT_TIMEOUT_S)
    server = PasswordRefusingServer(listener)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        listener.close()
        thread.join(timeout=5)
