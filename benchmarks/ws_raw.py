"""A minimal WebSocket client for load generation: cheap per message, loopback only.

The `websockets` client costs about 40 us of CPU per message round trip on this machine, which
the server's own cores pay when client and server share them. This client does the least a
client may: one HTTP upgrade, then frames written straight to the transport and parsed in
`data_received`. Client frames are masked, as RFC 6455 requires, with a fixed all-zero key: the
server unmasks them as any other, and on loopback there is no intermediary whose cache a
predictable key could poison (the reason the RFC wants random keys). No extensions, no
fragmentation (the server sends none), no ping handling beyond answering pings.
"""

import asyncio
import base64
import os
import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_MASK = b"\x00\x00\x00\x00"


class Closed(Exception):
    """The connection closed; `code` is the close code the server sent (None if none)."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed ({code})")
        self.code = code


def frame(payload: bytes, opcode: int) -> bytes:
    """One final client frame with the zero masking key."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + ZERO_MASK + payload


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.handshake: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.messages: asyncio.Queue[bytes | Closed] = asyncio.Queue()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.handshake.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.handshake.set_result(bytes(self.buffer[: end + 4]))
            del self.buffer[: end + 4]
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        at = 0
        while len(buf) - at >= 2:
            opcode, n = buf[at] & 0x0F, buf[at + 1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) - at < 4:
                    break
                n, head = struct.unpack_from("!H", buf, at + 2)[0], 4
            elif n == 127:
                if len(buf) - at < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, at + 2)[0], 10
            if len(buf) - at < head + n:
                break
            payload = bytes(buf[at + head : at + head + n])
            at += head + n
            if opcode in (TEXT, BINARY):
                self.messages.put_nowait(payload)
            elif opcode == PING and self.transport:
                self.transport.write(frame(payload, PONG))
            elif opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.messages.put_nowait(Closed(code))
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("closed during the handshake"))
        self.messages.put_nowait(Closed(None))


class RawWebSocket:
    """One client connection: `send` a message, `recv` the next one (raises Closed)."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @classmethod
    async def connect(cls, host: str, port: int, target: str) -> "RawWebSocket":
        """Open ws://host:port<target> (path and query)."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        protocol.transport.write(request.encode())
        response = await protocol.handshake
        if not response.startswith(b"HTTP/1.1 101"):
            protocol.transport.close()
            raise ConnectionError(response.split(b"\r\n", 1)[0].decode(errors="replace"))
        return cls(protocol)

    async def send(self, data: bytes, text: bool = False) -> None:
        self._protocol.transport.write(frame(data, TEXT if text else BINARY))

    async def recv(self) -> bytes:
        message = await self._protocol.messages.get()
        if isinstance(message, Closed):
            self._protocol.messages.put_nowait(message)
            raise message
        return message

    async def close(self) -> None:
        transport = self._protocol.transport
        if transport and not transport.is_closing():
            transport.write(frame(struct.pack("!H", 1000), CLOSE))
            transport.close()
