"""The gunicorn worker: gthread, with a read deadline on every request and JSON refusals.

gunicorn's threaded worker hands a connection to a request thread as soon as it is
readable, and the thread then blocks until the whole request head (and the body, as the
app reads it) has come. A client that trickles its headers, or declares a body and stalls,
holds a thread for as long as it likes; a few dozen of them hold every thread, and
``/healthz`` hangs with the rest. This worker first reads each request in its main loop,
without blocking, into memory: only a complete request (its head, and a body of declared
length up to ``BUFFERED_BODY_BYTES``) goes to a thread, which parses it from memory. A
request that is not complete within the read timeout of its first byte (of the
connection, for a new one) is answered 408 and its connection closed; a longer or chunked
body is read by the thread under the same deadline.

gunicorn's own refusals (a malformed request line or header, too many or too long
headers, an over-long URI) are answered in JSON like the bridge's, and counted in
``bridge_requests_rejected_total{endpoint="http"}``.

The hooks used (``enqueue_req``, ``murder_keepalived``, ``handle_error``, the parser's
read-ahead buffer) are the same in every gunicorn this package allows; none is gunicorn's
public API, so a test names each of them (docs/development.md, "The gunicorn worker").
"""

from __future__ import annotations

import contextlib
import errno
import gc
import inspect
import io
import json
import logging
import os
import re
import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn import SERVER
from gunicorn.http.errors import LimitRequestLine
from gunicorn.util import http_date
from gunicorn.workers.gthread import ThreadWorker

from ..service.config import DEFAULT_READ_TIMEOUT_SECONDS
from ..web.extension import EXTENSION_KEY
from ..web.fastpath import HEARTBEAT_PATH, HeartbeatFastPath

__all__ = ["DEFAULT_READ_TIMEOUT_SECONDS", "BridgeWorker", "ReadDeadlineExceeded", "plain_heartbeat_request"]

log = logging.getLogger(__name__)

#: Tracked objects allocated (net of those freed) that start a collection of the cyclic garbage
#: collector, where Python's default is 700: requests that wait for their commit hold tens of
#: thousands of objects (a batch of heartbeats, parsed), and at 700 the collector went over
#: them again and again (a fifth of a worker's time under a load of batches).
YOUNG_OBJECTS_PER_COLLECTION = 50_000

#: Bodies of declared length up to this are read by the main loop; longer ones by the thread.
BUFFERED_BODY_BYTES = 1024 * 1024
#: A head longer than this without its end is handed on for gunicorn's parser to refuse.
MAX_BUFFERED_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 65536
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
# A chunked body, or a client that waits for "100 Continue", is read by the thread.
_READ_IN_THREAD = re.compile(rb"\r\n(?:transfer-encoding|expect)[ \t]*:", re.IGNORECASE)

_REASONS = {
    400: "bad_request",
    408: "timeout",
    413: "too_large",
    414: "too_large",
    417: "bad_request",
    431: "too_large",
    501: "unsupported",
}


# The one request the worker answers without gunicorn's parser (see plain_heartbeat_request).
_HEARTBEAT_LINE = f"POST {HEARTBEAT_PATH} HTTP/1.1\r\n".encode()
# A header field as RFC 9110 writes it: a token, a colon, a value of visible characters with
# spaces or tabs inside, no obsolete folding. Stricter than gunicorn's parser: no underscore
# in a name (gunicorn drops or refuses those), nothing outside printable ASCII.
_FIELD = re.compile(rb"([-!#$%&'*+.^`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e]+[ \t]+)*[\x21-\x7e]+)?[ \t]*")
# Fields that change how a request is framed or served: such a request is gunicorn's to read.
_GUNICORNS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"http2-settings", b"te", b"trailer"})
# What ThreadWorker.handle returns is what its finish_request takes: gunicorn 23 hands it a
# future whose result is (keep-alive, connection), later ones the connection and a future of
# keep-alive alone.
_HANDLE_ANSWERS_PAIRS = "conn" not in inspect.signature(ThreadWorker.finish_request).parameters
_ANSWER_HEAD = (
    f"HTTP/1.1 200 OK\r\nServer: {SERVER}\r\nDate: %s\r\nConnection: %s\r\n"
    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
).encode("latin-1")


class ReadDeadlineExceeded(ConnectionResetError):
    """The request was not received within the read timeout; its connection is dropped."""


class _DeadlineSocket(socket.socket):
    """A connection's socket: hands out what the worker's loop already read, and reads
    more from the network only until the current request's deadline."""

    def __init__(self, family: int, type: int, proto: int, fileno: int):
        super().__init__(family, type, proto, fileno)
        self.pending = b""
        self.offset = 0
        self.deadline: float | None = None
        self.reading = False  # registered with the worker's poller, being read into ``pending``

    def buffered(self) -> bytes:
        """Return what was read and not yet handed out."""
        return self.pending[self.offset :]

    def keep(self, data: bytes) -> None:
        """Add ``data`` to what is handed out next."""
        self.pending, self.offset = self.buffered() + data, 0

    def read_now(self) -> bytes | None:
        """Return what the network has right now ('' at its end), None when nothing is there."""
        try:
            return socket.socket.recv(self, _RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return None

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.offset < len(self.pending):
            data = self.pending[self.offset : self.offset + size]
            self.offset += len(data)
            if self.offset == len(self.pending):
                self.pending, self.offset = b"", 0
            return data
        if self.deadline is None:
            return super().recv(size, flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ReadDeadlineExceeded(errno.ECONNRESET, "request not received within the read timeout")
        previous = self.gettimeout()
        self.settimeout(remaining)
        try:
            return super().recv(size, flags)
        except TimeoutError:
            raise ReadDeadlineExceeded(errno.ECONNRESET, "request not received within the read timeout") from None
        finally:
            self.settimeout(previous)


def request_is_complete(data: bytes) -> bool:
    """Return True when ``data`` holds a request the thread can parse without waiting.

    That is a whole head and, for a body of declared length up to
    ``BUFFERED_BODY_BYTES``, the whole body; or anything gunicorn's parser must refuse or
    read itself (a head too long, a duplicate or bad Content-Length, a chunked body).
    """
    end = data.find(_HEAD_END)
    if end < 0:
        return len(data) > MAX_BUFFERED_HEAD_BYTES
    head = data[: end + 2]
    if _READ_IN_THREAD.search(head):
        return True
    lengths = _CONTENT_LENGTH.findall(head)
    if not lengths:
        return True
    if len(lengths) > 1 or not lengths[0].strip().isdigit():
        return True  # gunicorn refuses it
    length = int(lengths[0].strip())
    return length > BUFFERED_BODY_BYTES or len(data) >= end + len(_HEAD_END) + length


def plain_heartbeat_request(
    data: bytes, max_fields: int = 100, max_field_bytes: int = 8190
) -> tuple[dict[str, Any], int, bool] | None:
    """Read the plain heartbeat request at the start of ``data``, a request read whole.

    Returns its WSGI environ (the method, the path, the body and the header fields; what the
    heartbeat fast path reads), the number of bytes it takes, and whether its client asked
    to close the connection. Returns None for any other request, and for anything in which
    gunicorn's parser might see another request or refuse it: another request line, a field
    that is not plain printable ASCII or is given twice, framing other than one
    Content-Length, a connection upgrade, as many fields as ``max_fields`` or a field as long
    as ``max_field_bytes`` (gunicorn's limits, whose defaults these are).
    """
    if not data.startswith(_HEARTBEAT_LINE):
        return None
    end = data.find(_HEAD_END, len(_HEARTBEAT_LINE) - 2)
    if end < len(_HEARTBEAT_LINE):  # no end of head, or no field at all
        return None
    lines = data[len(_HEARTBEAT_LINE) : end].split(b"\r\n")
    if len(lines) >= max_fields or max(map(len, lines)) >= max_field_bytes:
        return None
    fields = _plain_fields(lines)
    if fields is None:
        return None
    environ, close = fields
    declared = environ.get("CONTENT_LENGTH", "")
    if not (declared.isascii() and declared.isdigit()):
        return None
    size = end + len(_HEAD_END) + int(declared)
    if len(data) < size:
        return None
    environ["wsgi.input"] = io.BytesIO(data[end + len(_HEAD_END) : size])
    return environ, size, close


def _plain_fields(lines: list[bytes]) -> tuple[dict[str, Any], bool] | None:
    """Return a heartbeat's environ from its header ``lines``, and whether its client asked
    to close the connection; None when a field is not plain (see :func:`plain_heartbeat_request`)."""
    environ: dict[str, Any] = {"REQUEST_METHOD": "POST", "PATH_INFO": HEARTBEAT_PATH}
    seen: set[bytes] = set()
    close = False
    for line in lines:
        field = _FIELD.fullmatch(line)
        name = field[1].lower() if field is not None else b""
        if field is None or name in seen or name in _GUNICORNS:
            return None
        value = (field[2] or b"").decode("latin-1")
        seen.add(name)
        if name == b"connection":
            if value.lower() not in ("keep-alive", "close"):
                return None
            close = value.lower() == "close"
        elif name in (b"content-length", b"content-type"):
            environ[name.decode().upper().replace("-", "_")] = value
        else:
            environ["HTTP_" + name.decode().upper().replace("-", "_")] = value
    return environ, close


class _CapturedError:
    """Stands in for the client socket while gunicorn writes its HTML error page, to learn
    the status it chose; everything else goes to the real socket."""

    def __init__(self, client: socket.socket):
        self._client = client
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, _flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.written += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _json_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "field": "request"}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1") + body


def settle_garbage_collector() -> None:
    """Before a worker serves: collect, move every object left (the app, its modules, the
    configuration) to the collector's permanent generation, which it never goes over again,
    and collect young objects only after :data:`YOUNG_OBJECTS_PER_COLLECTION` of them."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS_PER_COLLECTION)


class BridgeWorker(ThreadWorker):
    """gunicorn's gthread worker, reading each request whole before a thread takes it."""

    alive: bool  # gunicorn's: False once the worker is to stop after its current requests

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: deque[tuple[float, Any]] = deque()  # (deadline, connection), by deadline

    def load_wsgi(self) -> None:
        super().load_wsgi()
        bridge = getattr(self.wsgi, "extensions", {}).get(EXTENSION_KEY)
        self.read_timeout = (
            bridge.settings.request_read_timeout_seconds if bridge is not None else DEFAULT_READ_TIMEOUT_SECONDS
        )
        self._monitor = bridge.monitor if bridge is not None else None
        self._fast_path = self._direct_fast_path()
        cfg = self.cfg
        # gunicorn's limits (0: its defaults, or none), read once: each read of cfg is a lookup
        self._field_limits = (
            cfg.limit_request_fields if cfg.limit_request_fields > 0 else 100,
            cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190,
        )
        self._keepalive = bool(cfg.keepalive)
        # the connections waiting for their next request (gunicorn 23 names them _keep)
        kept = getattr(self, "keepalived_conns", None)
        self._kept_alive: deque[Any] = kept if kept is not None else self._keep
        self._date = (0, b"")

    def run(self) -> None:
        settle_garbage_collector()
        super().run()

    def _direct_fast_path(self) -> HeartbeatFastPath | None:
        """Return the app's heartbeat fast path when this worker may answer plain heartbeats
        itself (see :meth:`handle`): not when gunicorn would do more with a request than
        parse it and write the answer (an access log, request hooks, a script name, TLS)."""
        fast_path = getattr(self.wsgi, "wsgi_app", None)
        cfg = self.cfg
        logged = ("accesslog", "logconfig", "logconfig_dict", "logconfig_json", "syslog")
        hooked = any(
            cfg.settings[name].value is not cfg.settings[name].default for name in ("pre_request", "post_request")
        )
        if (
            not isinstance(fast_path, HeartbeatFastPath)
            or any(getattr(cfg, name, None) for name in logged)
            or hooked
            or os.environ.get("SCRIPT_NAME")
            or cfg.is_ssl
        ):
            return None
        return fast_path

    # -- plain heartbeats, answered below gunicorn's WSGI ------------------------------

    def handle(self, conn: Any) -> Any:
        """Answer the connection's request, and each whole one sent behind it (pipelined), in
        turn: gunicorn 23 would leave those unread until the connection's keep-alive ends."""
        while True:
            kept = self._answer(conn)
            if not (kept[0] if _HANDLE_ANSWERS_PAIRS else kept) or not self._next_request_is_here(conn):
                return kept

    def _next_request_is_here(self, conn: Any) -> bool:
        """Return True when the connection's buffer holds the next request whole, under a new
        read deadline; what gunicorn's parser read ahead is taken back into the buffer."""
        sock = conn.sock
        if not isinstance(sock, _DeadlineSocket):
            return False
        ahead = self._take_read_ahead(conn)
        if ahead:
            sock.keep(ahead)
        pending = sock.buffered()
        if not pending or not request_is_complete(pending):
            return False  # the rest makes the socket readable: the main loop reads it
        sock.deadline = time.monotonic() + self.read_timeout
        return True

    def _answer(self, conn: Any) -> Any:
        """Answer a plain heartbeat on a kept-alive connection through the app's fast path,
        and any other request as gunicorn does; returns what gunicorn's handle returns.

        A heartbeat the fast path does not take is read again by gunicorn, and answered by
        the app as it would have been; so is one whose store raised, with that error.
        """
        fast_path = self._fast_path
        sock = conn.sock
        if fast_path is None or not conn.initialized or not isinstance(sock, _DeadlineSocket):
            return super().handle(conn)
        request = plain_heartbeat_request(sock.buffered(), *self._field_limits)
        if request is None or getattr(conn, "is_http2", False):
            return super().handle(conn)
        environ, size, close = request
        body = fast_path.plain_heartbeat_body(environ)
        try:
            answer = None if body is None else fast_path.answer(environ, body)
        except Exception as exc:  # committed or not, the app answers it, without applying it again
            fast_path.carry(exc)
            try:
                return super().handle(conn)
            finally:
                fast_path.carry(None)
        if answer is None:  # refused: the app answers and counts it
            return super().handle(conn)
        kept = self._send(conn, size, answer, close)
        return (kept, conn) if _HANDLE_ANSWERS_PAIRS else kept

    def _send(self, conn: Any, size: int, answer: bytes, close: bool) -> bool:
        """Write the 200 ``answer`` to the request of ``size`` bytes at the head of the
        connection's buffer; returns whether the connection is kept, as gunicorn decides it."""
        sock: _DeadlineSocket = conn.sock
        sock.offset += size  # a request sent behind it stays buffered (see handle)
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        keep = not close and self.alive and self._keepalive and len(self._kept_alive) < self.max_keepalived
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, http_date(second).encode("latin-1"))
        head = _ANSWER_HEAD % (self._date[1], b"keep-alive" if keep else b"close", len(answer))
        try:
            sock.setblocking(True)
            sock.sendall(head + answer)
        except OSError as exc:  # the client went away
            log.debug("heartbeat answer not sent: %s", exc)
            return False
        return bool(keep)

    # -- reading requests in the main loop ---------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Read the connection's next request into memory, then hand it to a thread."""
        sock = conn.sock
        if not isinstance(sock, _DeadlineSocket):
            sock = conn.sock = _DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
        sock.keep(self._take_read_ahead(conn))
        sock.deadline = time.monotonic() + self.read_timeout
        self._read(conn)

    @staticmethod
    def _take_read_ahead(conn: Any) -> bytes:
        """Return the bytes of the next request that gunicorn's parser already read, taken from it."""
        unreader = getattr(getattr(conn, "parser", None), "unreader", None)
        buffer = getattr(unreader, "buf", None)
        if unreader is None or not isinstance(buffer, io.BytesIO) or not buffer.getbuffer().nbytes:
            return b""
        unreader.buf = io.BytesIO()
        return buffer.getvalue()

    def _read(self, conn: Any, _fileobj: object = None) -> None:
        sock: _DeadlineSocket = conn.sock
        if sock.getblocking():
            sock.setblocking(False)
        while not request_is_complete(sock.buffered()):
            try:
                data = sock.read_now()
            except OSError:
                data = b""
            if data is None:  # wait in the poller for the rest, without a thread
                if not sock.reading:
                    sock.reading = True
                    with self._poller_lock():
                        self.poller.register(sock, selectors.EVENT_READ, partial(self._read, conn))
                    assert sock.deadline is not None  # set by enqueue_req
                    self._reading.append((sock.deadline, conn))
                return
            if not data:  # the client went away before its request was whole
                self._close(conn)
                return
            sock.keep(data)
        self._stop_reading(conn)
        conn.data_ready = True  # a gunicorn whose threads first wait for data: it is here already
        super().enqueue_req(conn)

    def _stop_reading(self, conn: Any) -> None:
        sock = conn.sock
        if sock.reading:
            sock.reading = False
            with self._poller_lock():
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.poller.unregister(sock)

    def _close(self, conn: Any) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    def _poller_lock(self) -> contextlib.AbstractContextManager[Any]:
        # gunicorn 23 registers from request threads too, under this lock; later ones do not.
        lock = getattr(self, "_lock", None)
        return lock if lock is not None else contextlib.nullcontext()

    def murder_keepalived(self, *args: Any, **kwargs: Any) -> None:
        """Close idle kept-alive connections (gunicorn's), and requests past their deadline."""
        super().murder_keepalived(*args, **kwargs)
        force = bool(kwargs.get("force") or (args and args[0]))
        now = time.monotonic()
        while self._reading and (force or self._reading[0][0] <= now):
            deadline, conn = self._reading.popleft()
            sock = conn.sock
            if not sock.reading or sock.deadline != deadline:
                continue  # complete, or reading a later request, since
            with contextlib.suppress(OSError):
                sock.send(_json_response(408, "Request Timeout", f"request not received within {self.read_timeout:g}s"))
            self._close(conn)
            if self._monitor is not None:  # the count writes to the store: not in this loop
                self.tpool.submit(self._monitor.reject, "http", "timeout")

    # -- gunicorn's refusals, in JSON -------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _CapturedError(client)
        super().handle_error(req, captured, addr, exc)
        status_line = captured.written.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if len(status_line) < 3 or not status_line[1].isdigit():
            return
        status, reason = int(status_line[1]), status_line[2]
        if isinstance(exc, LimitRequestLine):  # gunicorn 23 says 400, later ones 414
            status, reason = 414, "Request-URI Too Long"
        message = f"{reason}: {exc}" if status < 500 else "internal error"
        with contextlib.suppress(OSError):
            client.sendall(_json_response(status, reason, message[:1000]))
        if self._monitor is not None:
            self._monitor.reject("http", _REASONS.get(status, "bad_request" if status < 500 else "internal"))
