"""Resource limits of the policy server: request concurrency, buffered body bytes, body size, slow clients.

An ASGI middleware (:class:`LimitsMiddleware`) and an h11 protocol with a header timeout (:func:`uvicorn_config`).
Why each limit exists (measured before it did: 48 concurrent 15 MB bodies cost +1 GB RSS and made ``/act`` take
3 s; 500 connections that never finished their request were held for as long as the clients liked):

- ``max_body_bytes``: one body. Over it -> 413, by the declared Content-Length before anything is read, or by
  counting streamed (chunked) bytes.
- ``max_buffered_bytes``: all bodies being received or held by requests in flight, together. A request declaring a
  Content-Length reserves it on arrival; a chunked one reserves as its bytes arrive. A request that does not fit ->
  503 with ``Retry-After`` (not read: memory stays flat however many clients send at once).
- ``max_concurrent``: requests in flight (other than ``GET``, so ``/health`` and ``/metadata`` always answer).
  Over it -> 503 with ``Retry-After``.
- ``body_timeout_s``: time from the request's headers to the end of its body. A client that stops sending gets 408
  and its connection is closed.
- ``header_timeout_s``: time from accepting a connection to its first complete request head (uvicorn's
  ``timeout_keep_alive`` covers the time between later requests). Over it -> the connection is closed.

Any error answered before the body was fully read carries ``Connection: close``: the server does not read (and
throw away) the rest of a body it refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from policy.payload import APIError

__all__ = ["LimitCounters", "LimitsMiddleware", "ServerLimits", "uvicorn_config"]

_MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Limits of one server (see the module docstring). Sizes in bytes, times in seconds."""

    max_body_bytes: int = 16 * _MIB
    max_buffered_bytes: int = 64 * _MIB
    max_concurrent: int = 64
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 30.0
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not value > 0:
                raise ValueError(f"server limit {f.name} must be > 0, got {value}")
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(f"max_buffered_bytes ({self.max_buffered_bytes}) must be >= max_body_bytes "
                             f"({self.max_body_bytes}): otherwise a body of the maximum size could never be accepted")

    def describe(self) -> dict[str, Any]:
        """Served in ``/metadata`` under ``"server"`` so that clients can size their requests."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class LimitCounters:
    """Live counters of a :class:`LimitsMiddleware` (shown by ``/health``). Touched only on the event loop."""

    in_flight: int = 0  # requests admitted and not finished
    buffered: int = 0  # body bytes reserved by admitted requests
    peak_in_flight: int = 0
    peak_buffered: int = 0
    rejected: dict[str, int] = dataclasses.field(default_factory=lambda: {"408": 0, "413": 0, "503": 0})


async def _send_error(send, err: APIError, *, close: bool, retry_after: int | None = None) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LimitsMiddleware:
    """Pure ASGI middleware enforcing :class:`ServerLimits`; ``counters`` may be shared with the app (``/health``)."""

    def __init__(self, app, limits: ServerLimits, counters: LimitCounters | None = None):
        self.app, self.limits = app, limits
        self.c = LimitCounters() if counters is None else counters

    def _busy(self, what: str) -> APIError:
        self.c.rejected["503"] += 1
        return APIError(503, f"server busy: {what}; retry after {self.limits.retry_after_s} s", field=None,
                        expected=f"at most {self.limits.max_concurrent} requests and {self.limits.max_buffered_bytes}"
                                 " body bytes in flight")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)  # cheap, body-less: never limited (health under load)
        lim = self.limits
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                    if declared < 0:
                        raise ValueError
                except ValueError:
                    err = APIError(400, "invalid Content-Length header", field="Content-Length")
                    return await _send_error(send, err, close=True)
        if declared is not None and declared > lim.max_body_bytes:
            self.c.rejected["413"] += 1
            msg = f"request body of {declared} bytes exceeds the limit of {lim.max_body_bytes} bytes"
            err = APIError(413, msg, field="body", expected=f"<= {lim.max_body_bytes} bytes")
            return await _send_error(send, err, close=declared > 0)
        if self.c.in_flight >= lim.max_concurrent:
            err = self._busy(f"{self.c.in_flight} requests in flight (max_concurrent={lim.max_concurrent})")
            return await _send_error(send, err, close=declared is None or declared > 65536,
                                     retry_after=lim.retry_after_s)
        reserved = declared or 0
        if self.c.buffered + reserved > lim.max_buffered_bytes:
            err = self._busy(f"{self.c.buffered} body bytes buffered (max_buffered_bytes={lim.max_buffered_bytes})")
            return await _send_error(send, err, close=True, retry_after=lim.retry_after_s)

        # admitted: every exit below releases what was reserved
        self.c.in_flight += 1
        self.c.buffered += reserved
        self.c.peak_in_flight = max(self.c.peak_in_flight, self.c.in_flight)
        self.c.peak_buffered = max(self.c.peak_buffered, self.c.buffered)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.body_timeout_s
        seen = 0
        body_done = declared == 0

        async def limited_receive():
            nonlocal seen, reserved, body_done
            if body_done:
                return await receive()  # after the body: http.disconnect, never time-limited
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                self.c.rejected["408"] += 1
                raise APIError(408, f"request body not received within {lim.body_timeout_s:g} s", field="body",
                               expected=f"the whole body within {lim.body_timeout_s:g} s") from None
            if message["type"] != "http.request":
                return message
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                body_done = True
            if seen > lim.max_body_bytes:
                self.c.rejected["413"] += 1
                raise APIError(413, f"request body exceeds the limit of {lim.max_body_bytes} bytes", field="body",
                               expected=f"<= {lim.max_body_bytes} bytes")
            if seen > reserved:  # chunked, or more than declared: reserve as it arrives
                if self.c.buffered + seen - reserved > lim.max_buffered_bytes:
                    raise self._busy(f"{self.c.buffered} body bytes buffered "
                                     f"(max_buffered_bytes={lim.max_buffered_bytes})")
                self.c.buffered += seen - reserved
                reserved = seen
                self.c.peak_buffered = max(self.c.peak_buffered, self.c.buffered)
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            return await self.app(scope, limited_receive, closing_send)
        finally:
            self.c.in_flight -= 1
            self.c.buffered -= reserved


def uvicorn_config(app, limits: ServerLimits, **kwargs):
    """``uvicorn.Config`` for ``app`` with the h11 protocol and the header timeout of ``limits``."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class _HeaderTimeoutH11(H11Protocol):
        """Closes a connection that has not sent a complete request head ``header_timeout_s`` after it opened (the
        stock protocol waits forever for the first request; later ones are covered by ``timeout_keep_alive``)."""

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _header_timeout(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    kwargs.setdefault("timeout_keep_alive", int(max(1, round(limits.keep_alive_s))))
    return uvicorn.Config(app, http=_HeaderTimeoutH11, **kwargs)
