"""A loopback HTTP/1.1 proxy in front of a real Keycloak that counts requests, and can play "not ready".

One ``Proxy`` listens on its own loopback port and forwards each connection byte for byte to Keycloak,
parsing just enough of HTTP/1.1 (request and status lines, Content-Length, chunked bodies) to record every
request (time, method, path, status) in order. Keycloak (``start-dev``) names itself after the Host header,
so a tool pointed at the proxy sees metadata whose URLs all go through the proxy again: every request
the tool makes is counted. (Keycloak binds initial access tokens to that name too: mint them through the
proxy, or use ``rewrite_host`` and split horizon.)

Before ``open()`` the proxy is a gate in one of two modes:

* ``refuse``: its port is not bound at all (the kernel answers "connection refused"), as while a
  server's process has not started listening yet;
* ``answer``: it answers every request itself with a fixed status (503, no Retry-After), as a gateway
  or an ingress does while the server behind it is not ready. Those requests are counted too.

``open()`` starts forwarding and records the instant (``opened_at``, ``time.monotonic()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LOOPBACK = "127.0.0.1"
Mode = Literal["forward", "refuse", "answer"]
_HOST = re.compile(rb"\r\nhost:[^\r]*\r\n", re.IGNORECASE)
_REASONS = {404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


@dataclass
class Request:
    at: float
    method: str
    path: str
    status: int | None = None
    local: bool = False  # answered by the gate itself, not by Keycloak

    def line(self) -> str:
        path = self.path.split("?", 1)[0]
        return f"{self.method} {path} -> {self.status if self.status is not None else '-'}"


def _headers(head: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw in head.split(b"\r\n")[1:]:
        name, sep, value = raw.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, until_eof: bool) -> bytes:
    """The body exactly as it is on the wire (chunked stays chunked)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            raw += size_line
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    raw += trailer
                raw += b"\r\n"
                return bytes(raw)
            raw += await reader.readexactly(size + 2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read() if until_eof else b""


_taken: set[int] = set()


def unbound_port() -> int:
    """A free loopback port outside the kernel's ephemeral range, for a gate that binds it later.

    An ephemeral port could be handed to some outgoing connection in the meantime; these are not.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(10000, max(10001, low))
        if port in _taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _taken.add(port)
        return port


@dataclass
class Proxy:
    upstream_port: int
    port: int = 0  # 0: the kernel picks one when the proxy starts listening
    mode: Mode = "forward"
    answer_status: int = 503
    # Rewrite the Host header to Keycloak's own: Keycloak then names its real URLs (the tool reaches them
    # through this proxy by split horizon, DCR_INTERNAL_URL), and tokens minted at its real URL stay valid.
    rewrite_host: bool = False
    requests: list[Request] = field(default_factory=list)
    opened_at: float | None = None
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Proxy:
        """Listen now, unless the gate refuses connections until ``open()``."""
        if self.mode == "refuse" and not self.port:
            self.port = unbound_port()
        if self.mode == "forward":
            self.opened_at = time.monotonic()
        if self.mode != "refuse":
            await self._listen()
        return self

    async def open(self) -> float:
        """Start forwarding (binding the port first in ``refuse`` mode); returns the instant."""
        if self.mode == "refuse":
            await self._listen()
        self.mode = "forward"
        self.opened_at = time.monotonic()
        return self.opened_at

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def before_open(self) -> list[Request]:
        opened = self.opened_at if self.opened_at is not None else float("inf")
        return [r for r in self.requests if r.at < opened]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port, reuse_address=True, backlog=512)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link(writer)
        try:
            while (message := await _read_request(reader)) is not None:
                head, body = message
                method, _, rest = head.partition(b" ")
                request = Request(time.monotonic(), method.decode("latin-1"), rest.split(b" ", 1)[0].decode("latin-1"))
                self.requests.append(request)
                if self.mode != "forward":
                    await self._answer(request, writer)
                    continue
                if self.rewrite_host:
                    head = _HOST.sub(f"\r\nHost: {LOOPBACK}:{self.upstream_port}\r\n".encode(), head, count=1)
                await link.send(request, head + body, self.upstream_port)
            await link.finish()
        except (ConnectionError, OSError):
            pass
        finally:
            link.close()
            self._tasks.discard(task)

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> None:
        """Not ready: answer with ``answer_status`` here, without Keycloak."""
        request.status, request.local = self.answer_status, True
        reason = _REASONS.get(self.answer_status, "Not Ready")
        writer.write(f"HTTP/1.1 {self.answer_status} {reason}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, waiting: deque[Request]) -> None:
    """Keycloak's answers back to the client, each matched to the request it answers."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            headers = _headers(head)
            request = waiting[0] if waiting else None
            no_body = status < 200 or status in (204, 304) or (request is not None and request.method == "HEAD")
            body = b"" if no_body else await _read_body(reader, headers, until_eof=True)
            if status >= 200 and waiting:
                waiting.popleft().status = status
            writer.write(head + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """The next request's head and body as sent; None when the client is done (or sends something broken)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        body = await _read_body(reader, _headers(head), until_eof=False)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        return None
    return head, body


@dataclass
class _Link:
    """One client connection's way to Keycloak: opened on its first forwarded request, kept for the rest."""

    writer: asyncio.StreamWriter  # to the client
    upstream: asyncio.StreamWriter | None = None
    pump: asyncio.Task[None] | None = None
    waiting: deque[Request] = field(default_factory=deque)  # forwarded, not answered yet

    async def send(self, request: Request, raw: bytes, port: int) -> None:
        if self.upstream is None:
            up_reader, self.upstream = await asyncio.open_connection(LOOPBACK, port)
            self.pump = asyncio.create_task(_pump(up_reader, self.writer, self.waiting))
        self.waiting.append(request)
        self.upstream.write(raw)
        await self.upstream.drain()

    async def finish(self) -> None:
        """The client stopped sending; let the answers it is still owed arrive."""
        if self.pump is not None and self.waiting:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.pump), timeout=30)

    def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        for stream in (self.upstream, self.writer):
            if stream is not None:
                stream.close()


def summarize(requests: Iterable[Request]) -> list[str]:
    """'METHOD path -> status' for each request, in order."""
    return [r.line() for r in requests]
