"""The connection layer under the app: timeouts, a connection limit that idle connections cannot
exhaust, and JSON for the answers uvicorn itself would give in plain text.

uvicorn's own ``limit_concurrency`` counts every open connection, idle ones included: about
150 idle TCP connections made every request a plain-text 503 for as long as they stayed open.
So that limit is off, and this protocol (uvicorn's h11 protocol, subclassed) does instead:

- **head timeout** (``--header-timeout``, default 10 s): a connection must deliver a complete
  request head (request line and headers) within that time of opening, and of its previous
  response. A silent connection is closed; one that sent part of a head gets a JSON 408. (The
  body has its own deadline in the app: ``--body-timeout``, serve/inputs.py.)
- **connection limit** (``--max-connections``): when the table is full, the longest-open
  connection that is *not* in a request (idle keep-alive, or still sending its head) is closed
  to make room; only when every open connection is inside a request is the new one refused,
  with a JSON 503 and ``Retry-After``. Idle connections therefore never stand in for requests.
  The limit is kept below the process's file-descriptor limit (:func:`fit_to_fd_limit`).
- a malformed request head (uvicorn's plain-text 400) is answered in the service's JSON error
  shape.

Built lazily (:func:`protocol_class`): uvicorn is imported only when the service starts.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from typing import Any, Optional

log = logging.getLogger("clip_rt.serve")
FD_RESERVE = 128  # descriptors kept for the process itself: sessions, the cache, threads, logs


def raw_response(status: int, reason: str, kind: str, message: str, retry_after: Optional[int] = None) -> bytes:
    """A complete HTTP/1.1 response with the service's JSON error body, closing the connection
    (written straight to the transport where no request cycle exists to answer through)."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": status, "param": None}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


class ConnectionTable:
    """The open connections, oldest first, with a limit that only requests count against."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: OrderedDict[Any, None] = OrderedDict()
        self.evicted = 0  # idle connections closed to make room
        self.refused = 0  # connections refused because every open one was in a request

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: Any) -> bool:
        """Add *conn*; when full, close the oldest connection not inside a request first. False:
        every open connection is inside a request (the caller refuses *conn*)."""
        while len(self._open) >= self.limit:
            victim = next((c for c in self._open if not c.in_request()), None)
            if victim is None:
                self.refused += 1
                return False
            self._open.pop(victim, None)
            self.evicted += 1
            victim.close_quietly()
        self._open[conn] = None
        return True

    def discard(self, conn: Any) -> None:
        self._open.pop(conn, None)


def fit_to_fd_limit(wanted: int) -> int:
    """*wanted* connections, or fewer if the process may not open that many descriptors: the
    soft RLIMIT_NOFILE is raised towards the hard one first (as servers do); what still does not
    fit lowers the limit, with a warning, instead of failing accept() later."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing to check against
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        fitted = max(1, soft - FD_RESERVE)
        log.warning(
            "--max-connections %d lowered to %d: this process may open %d files (ulimit -n)", wanted, fitted, soft
        )
        return fitted
    return wanted


def protocol_class(table: ConnectionTable, header_timeout: float) -> type:
    """uvicorn's h11 protocol with the head timeout, the connection table and JSON answers."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _head_timer: Any = None
        _head_cycle: Any = None
        _refused = False

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if not table.admit(self):
                self._refused = True  # answered with a JSON 503 once its request arrives
            self._arm_head_timer()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            table.discard(self)
            self._cancel_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                self._answer_and_close(
                    raw_response(
                        503,
                        "Service Unavailable",
                        "overloaded",
                        f"the service has {len(table)} connections in "
                        "requests, its limit (--max-connections); retry shortly",
                        retry_after=1,
                    )
                )
                return
            super().data_received(data)
            if self._new_request():
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a pipelined request
            if not self.transport.is_closing() and not self._new_request():
                self._arm_head_timer()  # the next request's head is due within the timeout

        def send_400_response(self, msg: str) -> None:
            # uvicorn's is plain text; an oversized or malformed head gets the JSON shape too.
            self._answer_and_close(
                raw_response(400, "Bad Request", "invalid_request", f"malformed or oversized HTTP request head ({msg})")
            )

        # -- the connection table's view --------------------------------------------------------
        def in_request(self) -> bool:
            """A request head has arrived and its response is not complete."""
            return self.cycle is not None and not self.cycle.response_complete and not self._refused

        def close_quietly(self) -> None:
            self._cancel_head_timer()
            if not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
                self.transport.close()

        # -- the head timer ---------------------------------------------------------------------
        def _new_request(self) -> bool:
            return self.cycle is not None and self.cycle is not self._head_cycle and not self.cycle.response_complete

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self._new_request():
                return
            partial, _ = self.conn.trailing_data
            if partial and not self._refused:
                self._answer_and_close(
                    raw_response(
                        408,
                        "Request Timeout",
                        "request_timeout",
                        f"the request head did not arrive within {header_timeout:g} s (--header-timeout)",
                    )
                )
            else:  # silent (or refused) since it opened or since its last response: just closed
                self.close_quietly()

        def _answer_and_close(self, response: bytes) -> None:
            self._cancel_head_timer()
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()

    return GuardedH11Protocol
