"""Fault injection for the served API: an ASGI middleware that breaks responses on purpose.

:class:`FaultInjector` wraps an app (``datamint-pipes serve --faults RATE``, or tests) and, for a share of
requests given by :class:`FaultRates`, does one of:

* ``reset`` -- abort the connection with a TCP reset before any response;
* ``close_before_body`` -- send the status line and headers (with the full ``Content-Length``), then close;
* ``unavailable`` / ``unavailable_retry_after`` -- answer 503, without / with a ``Retry-After`` header;
* ``truncate`` -- declare the full ``Content-Length``, send half of the body, then close;
* ``stall`` -- wait ``stall_seconds`` (longer than the client's timeout) before answering normally.

Which request gets which fault is a pure function of (``seed``, method, path with query, how many times that
same request was seen before), so a run is reproducible whatever the interleaving of concurrent requests, and
a retried request draws afresh. ``latency_seconds`` delays every matching request (a slow link, not a fault).

Connections are dropped through the uvicorn transport behind the ASGI ``send`` callable; under another server
the middleware falls back to raising after the response started, which makes the server close the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the middleware itself needs no ASGI framework
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["FAULT_KINDS", "FaultInjector", "FaultRates"]

log = logging.getLogger(__name__)

FAULT_KINDS = ("reset", "close_before_body", "unavailable", "unavailable_retry_after", "truncate", "stall")


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request; each in [0, 1], summing to at most 1."""

    reset: float = 0.0
    close_before_body: float = 0.0
    unavailable: float = 0.0
    unavailable_retry_after: float = 0.0
    truncate: float = 0.0
    stall: float = 0.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind}={rate!r} must be a probability in [0, 1]")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {self.total:.3f}; they must sum to at most 1")

    @property
    def total(self) -> float:
        """Probability that a request gets some fault."""
        return float(sum(getattr(self, kind) for kind in FAULT_KINDS))

    @classmethod
    def uniform(cls, total: float, kinds: tuple[str, ...] = FAULT_KINDS) -> FaultRates:
        """``total`` spread evenly over ``kinds`` (all of them by default)."""
        if not 0.0 <= total <= 1.0:
            raise ValueError(f"{total=} must be a probability in [0, 1]")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"{kinds=} must be a non-empty subset of {FAULT_KINDS}")
        return cls(**{kind: total / len(kinds) for kind in kinds})


class _InjectedDisconnect(ConnectionAbortedError):
    """Raised inside the server to make it drop a connection when no transport is reachable."""


def _transport(send: Send) -> asyncio.Transport | None:
    """The connection's transport behind uvicorn's ``send`` (a bound method of its request cycle)."""
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    return transport if isinstance(transport, asyncio.BaseTransport) else None  # type: ignore[return-value]


async def _wait_disconnect(receive: Receive, timeout: float = 2.0) -> None:
    """Wait until the server has noticed the closed connection, so it does not try to answer afterwards."""
    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(timeout):
            while (await receive())["type"] != "http.disconnect":
                pass


@dataclass
class FaultInjector:
    """ASGI middleware injecting faults into ``app``'s responses (see the module docstring).

    ``paths``: only requests whose path starts with one of these prefixes are touched (all when empty).
    ``requests`` counts matching requests by (method, path); ``injected`` counts faults by kind.
    """

    app: ASGIApp
    rates: FaultRates = dataclasses.field(default_factory=FaultRates)
    seed: int = 0
    stall_seconds: float = 2.0
    retry_after_seconds: int = 1
    latency_seconds: float = 0.0
    paths: tuple[str, ...] = ()
    requests: Counter[tuple[str, str]] = dataclasses.field(default_factory=Counter, init=False)
    injected: Counter[str] = dataclasses.field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        if self.stall_seconds < 0 or self.latency_seconds < 0 or self.retry_after_seconds < 0:
            raise ValueError("stall_seconds, latency_seconds and retry_after_seconds must be >= 0")
        self._seen: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def choose(self, method: str, target: str) -> str | None:
        """The fault for the next request ``method target`` (path and query), or ``None``; counts it."""
        with self._lock:
            occurrence = self._seen[(method, target)]
            self._seen[(method, target)] += 1
        digest = hashlib.sha256(f"{self.seed}\0{method}\0{target}\0{occurrence}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2.0**64
        cumulative = 0.0
        for kind in FAULT_KINDS:
            cumulative += getattr(self.rates, kind)
            if draw < cumulative:
                return kind
        return None

    def _matches(self, path: str) -> bool:
        return not self.paths or any(path.startswith(prefix) for prefix in self.paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._matches(scope["path"]):
            await self.app(scope, receive, send)
            return
        method, path = str(scope["method"]), str(scope["path"])
        query = scope.get("query_string", b"").decode("latin-1")
        with self._lock:
            self.requests[(method, path)] += 1
        if self.latency_seconds:
            await asyncio.sleep(self.latency_seconds)
        kind = self.choose(method, f"{path}?{query}" if query else path)
        if kind is None:
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.injected[kind] += 1
        log.info("injecting fault %s into %s %s", kind, method, path)
        if kind == "stall":
            await asyncio.sleep(self.stall_seconds)
            await self.app(scope, receive, send)
        elif kind in ("unavailable", "unavailable_retry_after"):
            await self._unavailable(send, retry_after=kind == "unavailable_retry_after")
        elif kind == "reset":
            await self._drop(receive, send, reset=True)
        else:
            start, body = await self._capture(scope, receive)
            await send(start)
            if kind == "truncate" and len(body) > 1:
                await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            await self._drop(receive, send, reset=False)

    async def _unavailable(self, send: Send, *, retry_after: bool) -> None:
        body = json.dumps({"error": "service unavailable (injected fault)", "status": 503}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if retry_after:
            headers.append((b"retry-after", str(self.retry_after_seconds).encode()))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[Message, bytes]:
        """Run the app, keeping its response start message and its whole body."""
        start: Message = {"type": "http.response.start", "status": 500, "headers": []}
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, keep)
        return start, b"".join(chunks)

    async def _drop(self, receive: Receive, send: Send, *, reset: bool) -> None:
        """Close the connection now: with a TCP reset (``SO_LINGER`` 0) or an orderly close after the data."""
        transport = _transport(send)
        if transport is None:
            raise _InjectedDisconnect("injected fault: connection dropped")
        if reset:
            sock: Any = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        await _wait_disconnect(receive)
