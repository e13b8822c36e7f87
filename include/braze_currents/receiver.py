"""Run a local stand-in for Segment's ``/v1/batch`` endpoint, for the demo, tests and benchmarks.

The receiver applies the documented limits of Segment's HTTP Tracking API (write key auth, 500 KB per
request, 32 KB per event, 2,500 events per request, ``messageId`` under 100 characters, dedupe on
``messageId``) and appends every accepted event to an NDJSON file. Faults (429, 5xx, slow answers,
dropped connections) can be queued to exercise a retrying client.

Run it on its own with::

    python -m braze_currents.receiver --port 0 --write-key-env SEGMENT_WRITE_KEY --out accepted.ndjson

.. note::
    This is not Segment. It checks only what is listed above: no rate limiting unless a 429 is injected,
    no limit on the number of properties, no OAuth tokens, no regions, and deduplication lasts as long
    as the out file rather than about 24 hours. A restarted receiver reads the message ids already in
    its out file, so a resent event is still counted as a duplicate. The control endpoints
    (``/_stats``, ``/_control/...``) need no auth, which is why the receiver only binds to loopback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import dataclasses
import hmac
import ipaddress
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import orjson

log = logging.getLogger(__name__)

BATCH_PATH = "/v1/batch"
STATS_PATH = "/_stats"
CONTROL_FAULTS_PATH = "/_control/faults"
CONTROL_WRITE_KEY_PATH = "/_control/write_key"
CONTROL_RESET_PATH = "/_control/reset"

MAX_REQUEST_BYTES = 512_000
MAX_EVENT_BYTES = 32_768
MAX_BATCH_EVENTS = 2_500
MAX_MESSAGE_ID_CHARS = 100
EVENT_TYPES = frozenset({"track", "identify", "page", "screen", "group", "alias"})

# Reasons an event is dropped while the request still gets a 200, as keys of ``stats()["rejected"]``.
REASON_NOT_AN_OBJECT = "not_an_object"
REASON_MISSING_TYPE = "missing_type"
REASON_INVALID_TYPE = "invalid_type"
REASON_MISSING_IDENTITY = "missing_identity"
REASON_MISSING_EVENT = "missing_event"
REASON_INVALID_MESSAGE_ID = "invalid_message_id"
REASON_MESSAGE_ID_TOO_LONG = "message_id_too_long"
REASON_INVALID_TIMESTAMP = "invalid_timestamp"

# The raw body is kept up to this size (a gzip body may be larger than the JSON limit only by a little);
# anything bigger is read and thrown away so that the client still gets its 400.
_MAX_RAW_BYTES = 4 * MAX_REQUEST_BYTES
_READ_SIZE = 65_536
_LOOPBACK_NAMES = {"localhost": "127.0.0.1"}


@dataclasses.dataclass(frozen=True)
class Fault:
    """Describe how the next ``/v1/batch`` requests are answered instead of being processed.

    A delay is applied first; then the connection is dropped, or the status is returned, or (with only a
    delay) the request is processed normally.

    :param status: the HTTP status to answer with, 400 to 599.
    :param retry_after: seconds to send in a ``Retry-After`` header with the status.
    :param delay: seconds to wait before answering, e.g. to outlast a client's read timeout.
    :param drop_connection: read the body, then close the socket without any response.
    :param times: how many consecutive requests this fault is applied to.
    """

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    drop_connection: bool = False
    times: int = 1

    def __post_init__(self) -> None:
        if self.status is not None and (not _is_int(self.status) or not 400 <= self.status <= 599):
            raise ValueError(f"status must be an int from 400 to 599, got {self.status!r}")
        if self.retry_after is not None and (not _is_number(self.retry_after) or self.retry_after < 0):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {self.retry_after!r}")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after needs a status to be sent with")
        if not _is_number(self.delay) or self.delay < 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if not isinstance(self.drop_connection, bool):
            raise ValueError(f"drop_connection must be true or false, got {self.drop_connection!r}")
        if self.drop_connection and self.status is not None:
            raise ValueError("a fault either drops the connection or answers with a status, not both")
        if not _is_int(self.times) or self.times < 1:
            raise ValueError(f"times must be an int >= 1, got {self.times!r}")
        if self.status is None and not self.drop_connection and not self.delay:
            raise ValueError("a fault needs a status, a delay or drop_connection")

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build a fault from its JSON form, e.g. ``{"status": 503, "times": 2}``.

        :param data: a mapping of field names to values.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a fault must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class _Reply:
    """What the handler sends back; a ``status`` of None closes the connection without a response."""

    status: int | None
    body: dict[str, Any] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


class _RequestError(Exception):
    """Raised while reading a request that must be answered with an error status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = _error(code, message)

    @property
    def reply(self) -> _Reply:
        return _Reply(self.status, self.body)


class SegmentReceiver:
    """Serve a Segment-compatible ``/v1/batch`` endpoint on loopback and record what it accepts.

    :param write_key: the write key a request must carry, as the Basic auth user or ``writeKey`` field.
    :param out_path: the NDJSON file accepted events are appended to, one merged event per line.
    :param host: a loopback address to bind to.
    :param port: the port to bind to; 0 picks a free one (read it back from ``url``).
    :param reuse_port: share the port with other receivers started with it (``SO_REUSEPORT``): the kernel
        spreads connections across them, so a load test is not limited by one process. Each keeps its
        own counts, out file and dedupe.
    """

    def __init__(
        self,
        *,
        write_key: str,
        out_path: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 0,
        reuse_port: bool = False,
    ) -> None:
        if not write_key:
            raise ValueError("write_key must not be empty")
        self._host = _loopback_host(host)
        self._requested_port = port
        self._reuse_port = reuse_port
        self._out_path = Path(out_path)
        self._write_key = write_key

        self._lock = threading.Lock()
        self._faults: collections.deque[list[Any]] = collections.deque()
        self._ids: set[str] = set()
        self._refused_ids: set[str] = set()
        self._arrivals: list[tuple[float, int]] = []
        self._requests = 0
        self._accepted = 0
        self._duplicates = 0
        self._dropped_over_limit = 0
        self._unauthorized = 0
        self._connections_dropped = 0
        self._rejected: collections.Counter[str] = collections.Counter()
        self._status_counts: collections.Counter[int] = collections.Counter()

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> SegmentReceiver:
        """Bind the port and serve requests from a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the receiver is already started")
        self._load_accepted_ids()
        server = _Server((self._host, self._requested_port), self, reuse_port=self._reuse_port)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="segment-receiver", daemon=True
        )
        self._server = server
        self._thread.start()
        log.info("Segment receiver listening on %s, writing to %s", self.url, self._out_path)
        return self

    def stop(self) -> None:
        """Stop serving and release the port; requests still being answered finish on their own."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None
        stats = self.stats()
        log.info(
            "Segment receiver stopped after %s requests, %s events accepted",
            stats["requests"],
            stats["accepted"],
        )

    def __enter__(self) -> SegmentReceiver:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``; the batch endpoint is ``url + "/v1/batch"``."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._server.server_address[1]}"

    @property
    def batch_url(self) -> str:
        """The full URL of the batch endpoint."""
        return self.url + BATCH_PATH

    # -- control -------------------------------------------------------------------------------------

    def set_write_key(self, write_key: str) -> None:
        """Accept only this write key from now on, e.g. to answer 401 part way through a run.

        :param write_key: the new key.
        """
        if not write_key:
            raise ValueError("write_key must not be empty")
        with self._lock:
            self._write_key = write_key

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each one answers the next ``times`` batch requests, first queued first used.

        :param faults: the faults to add to the end of the queue.
        """
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected a Fault, got {type(fault).__name__}")
        with self._lock:
            self._faults.extend([fault, fault.times] for fault in faults)

    def refuse_message_ids(self, message_ids: set[str] | frozenset[str]) -> None:
        """Answer 400 to any batch that holds one of these messageIds, as Segment does for a bad event.

        :param message_ids: the ids to refuse; an empty set accepts everything again.
        """
        with self._lock:
            self._refused_ids = set(message_ids)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Return the queued faults, each with ``times`` set to the requests it still applies to."""
        with self._lock:
            return [dataclasses.replace(fault, times=left) for fault, left in self._faults]

    # -- what was received ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return the counters; ``status_counts`` is keyed by int status (strings in ``GET /_stats``)."""
        with self._lock:
            return {
                "requests": self._requests,
                "accepted": self._accepted,
                "duplicates": self._duplicates,
                "dropped_over_limit": self._dropped_over_limit,
                "rejected": dict(self._rejected),
                "status_counts": dict(self._status_counts),
                "unauthorized": self._unauthorized,
                "connections_dropped": self._connections_dropped,
            }

    def accepted_ids(self) -> set[str]:
        """Return the message ids accepted so far, including those already in the out file at start."""
        with self._lock:
            return set(self._ids)

    def accepted_messages(self) -> list[dict[str, Any]]:
        """Return every event in the out file, in the order it was accepted."""
        with self._lock:
            if not self._out_path.exists():
                return []
            with self._out_path.open("rb") as handle:
                return [orjson.loads(line) for line in handle if line.strip()]

    def arrivals(self) -> list[tuple[float, int]]:
        """Return ``(time.monotonic() at arrival, number of events)`` for every batch request."""
        with self._lock:
            return list(self._arrivals)

    # -- request handling (called from the server's threads) -----------------------------------------

    def _serve_batch(self, arrived: float, raw: bytes | None, headers: Message) -> _Reply:
        """Answer one ``/v1/batch`` request: faults first, then auth, limits and per-event checks."""
        payload: Any = None
        error: _RequestError | None = None
        try:
            payload = _load_json(raw, headers.get("Content-Encoding", ""))
        except _RequestError as err:
            error = err
        batch = payload.get("batch") if isinstance(payload, dict) else None
        with self._lock:
            self._requests += 1
            self._arrivals.append((arrived, len(batch) if isinstance(batch, list) else 0))
            fault = self._take_fault()

        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop_connection:
                with self._lock:
                    self._connections_dropped += 1
                return _Reply(None)
            if fault.status is not None:
                extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                code = "rate_limited" if fault.status == 429 else "injected_fault"
                return self._reply(fault.status, {"success": False, "code": code}, extra)

        authorization = headers.get("Authorization")
        if authorization is not None and not self._key_matches(_basic_auth_user(authorization)):
            return self._unauthorized_reply()
        if error is not None:
            return self._reply(error.status, error.body)
        if not isinstance(payload, dict) or not isinstance(batch, list):
            return self._reply(400, _error("invalid_body", "the body must be an object with a list 'batch'"))
        if authorization is None and not self._key_matches(payload.get("writeKey")):
            return self._unauthorized_reply()

        considered = batch[:MAX_BATCH_EVENTS]
        dumps = orjson.dumps
        encoded = []
        for index, event in enumerate(considered):
            data = dumps(event)
            if len(data) > MAX_EVENT_BYTES:
                size = len(data)
                message = f"event {index} is {size} bytes, over the {MAX_EVENT_BYTES} byte limit"
                return self._reply(400, _error("event_too_large", message, index=index, size=size))
            encoded.append(data)

        with self._lock:
            refused = self._refused_ids
        if refused:
            for index, event in enumerate(considered):
                if isinstance(event, dict) and event.get("messageId") in refused:
                    message = f"event {index} is not valid"
                    return self._reply(400, _error("invalid_event", message, index=index))

        received_at = _utc_now_iso()
        defaults = {key: payload.get(key) for key in ("context", "integrations")}
        defaults = {key: value for key, value in defaults.items() if isinstance(value, dict)}
        # An event with none of those keys of its own (nor receivedAt) gets them appended: the same
        # bytes as dumping the merged event, without building it.
        appended = b"".join(b',"' + key.encode() + b'":' + dumps(value) for key, value in defaults.items())
        appended += b',"receivedAt":' + dumps(received_at) + b"}\n"
        rejected: collections.Counter[str] = collections.Counter()
        lines: list[tuple[str, bytes]] = []
        for event, data in zip(considered, encoded, strict=True):
            reason = _event_problem(event)
            if reason is not None:
                rejected[reason] += 1
                continue
            if "receivedAt" in event or any(key in event for key in defaults):
                merged = _merge_defaults(event, payload.get("context"), payload.get("integrations"))
                merged["receivedAt"] = received_at
                lines.append((event["messageId"], dumps(merged) + b"\n"))
            else:
                lines.append((event["messageId"], data[:-1] + appended))

        with self._lock:
            fresh = []
            for message_id, line in lines:
                if message_id in self._ids:
                    self._duplicates += 1
                    continue
                self._ids.add(message_id)
                fresh.append(line)
            if fresh:
                try:
                    handle = self._out_path.open("ab")
                except FileNotFoundError:
                    self._out_path.parent.mkdir(parents=True, exist_ok=True)
                    handle = self._out_path.open("ab")
                with handle:
                    handle.write(b"".join(fresh))
            self._accepted += len(fresh)
            self._dropped_over_limit += len(batch) - len(considered)
            self._rejected.update(rejected)
        return self._reply(200, {"success": True})

    def _serve_control(self, path: str, raw: bytes | None) -> _Reply:
        """Answer one ``/_control/...`` request from an out-of-process test."""
        if path == CONTROL_RESET_PATH:
            self.clear_faults()
            return _Reply(200, {"success": True})
        try:
            payload = _load_json(raw, "")
        except _RequestError as err:
            return err.reply
        if path == CONTROL_FAULTS_PATH:
            if not isinstance(payload, list):
                return _Reply(400, _error("invalid_body", "expected a JSON list of faults"))
            try:
                faults = [Fault.from_dict(item) for item in payload]
            except (TypeError, ValueError) as err:
                return _Reply(400, _error("invalid_fault", str(err)))
            self.inject(*faults)
            return _Reply(200, {"success": True, "queued": len(faults)})
        if path == CONTROL_WRITE_KEY_PATH:
            key = payload.get("write_key") if isinstance(payload, dict) else None
            if not isinstance(key, str) or not key:
                return _Reply(400, _error("invalid_body", 'expected {"write_key": "<non-empty string>"}'))
            self.set_write_key(key)
            return _Reply(200, {"success": True})
        return _Reply(404, _error("not_found", "no such control endpoint"))

    def _take_fault(self) -> Fault | None:
        """Consume one use of the fault at the head of the queue; call with the lock held."""
        if not self._faults:
            return None
        entry = self._faults[0]
        entry[1] -= 1
        if entry[1] <= 0:
            self._faults.popleft()
        return entry[0]

    def _key_matches(self, candidate: object) -> bool:
        with self._lock:
            expected = self._write_key
        if not isinstance(candidate, str):
            return False
        return hmac.compare_digest(candidate.encode(), expected.encode())

    def _unauthorized_reply(self) -> _Reply:
        with self._lock:
            self._unauthorized += 1
        return self._reply(401, {"success": False, "code": "unauthorized"})

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> _Reply:
        """Build a batch reply and count its status."""
        with self._lock:
            self._status_counts[status] += 1
        return _Reply(status, body, headers or {})

    def _load_accepted_ids(self) -> None:
        """Read the message ids already in the out file so a restarted receiver still dedupes them."""
        if not self._out_path.exists():
            return
        ids: set[str] = set()
        skipped = 0
        with self._out_path.open("rb") as handle:
            for line in handle:
                try:
                    message_id = orjson.loads(line).get("messageId")
                except (orjson.JSONDecodeError, AttributeError):
                    skipped += 1
                    continue
                if isinstance(message_id, str):
                    ids.add(message_id)
        with self._lock:
            self._ids |= ids
        if skipped:
            log.warning("Skipped %s unreadable lines in %s", skipped, self._out_path)
        log.info("Loaded %s accepted message ids from %s", len(ids), self._out_path)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its receiver and keeps handler errors off stderr."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: SegmentReceiver, reuse_port: bool = False) -> None:
        self.allow_reuse_port = reuse_port
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.receiver = receiver
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up (getfqdn); a loopback receiver needs no DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("Error while answering %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Route requests to the receiver; one instance per connection."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        arrived = time.monotonic()
        path = urlsplit(self.path).path
        try:
            raw = self._read_body()
        except _RequestError as err:
            self.close_connection = True
            self._send(err.reply)
            return
        except (ConnectionError, TimeoutError):
            self.close_connection = True
            return

        receiver = self.server.receiver
        if path == BATCH_PATH:
            reply = receiver._serve_batch(arrived, raw, self.headers)
        elif path.startswith("/_control/"):
            reply = receiver._serve_control(path, raw)
        else:
            reply = _Reply(404, _error("not_found", "no such endpoint"))
        self._send(reply)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == STATS_PATH:
            self._send(_Reply(200, self.server.receiver.stats()))
        elif path == BATCH_PATH:
            self._send(_Reply(405, _error("method_not_allowed", "use POST"), {"Allow": "POST"}))
        else:
            self._send(_Reply(404, _error("not_found", "no such endpoint")))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)

    def _read_body(self) -> bytes | None:
        """Read the whole body; return None when it is over the raw size cap (it is drained anyway)."""
        if self.headers.get("Transfer-Encoding", "").strip().lower() == "chunked":
            pieces = self._chunked_pieces()
        else:
            length_text = self.headers.get("Content-Length", "0").strip() or "0"
            if not length_text.isdigit():
                raise _RequestError(400, "invalid_content_length", "Content-Length is not a number")
            pieces = self._fixed_pieces(int(length_text))
        kept: list[bytes] = []
        size = 0
        for piece in pieces:
            size += len(piece)
            if size <= _MAX_RAW_BYTES:
                kept.append(piece)
        return b"".join(kept) if size <= _MAX_RAW_BYTES else None

    def _fixed_pieces(self, length: int) -> Iterator[bytes]:
        while length > 0:
            piece = self.rfile.read(min(length, _READ_SIZE))
            if not piece:
                raise ConnectionError("the client closed the connection mid-body")
            length -= len(piece)
            yield piece

    def _chunked_pieces(self) -> Iterator[bytes]:
        while True:
            size_text = self.rfile.readline(_READ_SIZE).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _RequestError(400, "invalid_chunking", "malformed chunk size") from None
            if size == 0:
                while self.rfile.readline(_READ_SIZE) not in (b"\r\n", b"\n", b""):
                    pass
                return
            yield from self._fixed_pieces(size)
            self.rfile.readline(_READ_SIZE)

    def _send(self, reply: _Reply) -> None:
        if reply.status is None:
            self.close_connection = True
            return
        body = orjson.dumps(reply.body, option=orjson.OPT_NON_STR_KEYS)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (ConnectionError, TimeoutError):
            # The client gave up first, e.g. its read timeout was shorter than an injected delay.
            self.close_connection = True


def _load_json(raw: bytes | None, content_encoding: str) -> Any:
    """Decompress and parse a request body, enforcing the request size limit on the JSON itself."""
    if raw is None:
        raise _RequestError(400, "body_too_large", f"the body is over {MAX_REQUEST_BYTES} bytes")
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            # Never inflate more than one byte past the limit, whatever the compressed size.
            data = decompressor.decompress(raw, MAX_REQUEST_BYTES + 1)
        except zlib.error:
            raise _RequestError(400, "invalid_gzip", "the body is not valid gzip") from None
        if len(data) <= MAX_REQUEST_BYTES and not decompressor.eof:
            raise _RequestError(400, "invalid_gzip", "the gzip body is truncated")
    elif encoding in ("", "identity"):
        data = raw
    else:
        raise _RequestError(400, "unsupported_encoding", "only gzip and identity encodings are accepted")
    if len(data) > MAX_REQUEST_BYTES:
        raise _RequestError(400, "body_too_large", f"the body is over {MAX_REQUEST_BYTES} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _RequestError(400, "invalid_json", "the body is not valid JSON") from None


def _event_problem(event: Any) -> str | None:
    """Return why an event would be dropped by Segment, or None when it is acceptable."""
    if not isinstance(event, dict):
        return REASON_NOT_AN_OBJECT
    event_type = event.get("type")
    if event_type is None:
        return REASON_MISSING_TYPE
    if event_type not in EVENT_TYPES:
        return REASON_INVALID_TYPE
    if not any(isinstance(event.get(key), str) and event[key] for key in ("userId", "anonymousId")):
        return REASON_MISSING_IDENTITY
    if event_type == "track" and not (isinstance(event.get("event"), str) and event["event"]):
        return REASON_MISSING_EVENT
    message_id = event.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        return REASON_INVALID_MESSAGE_ID
    if len(message_id) >= MAX_MESSAGE_ID_CHARS:
        return REASON_MESSAGE_ID_TOO_LONG
    if "timestamp" in event and not _is_iso_timestamp(event["timestamp"]):
        return REASON_INVALID_TIMESTAMP
    return None


def _is_iso_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _merge_defaults(event: dict[str, Any], context: Any, integrations: Any) -> dict[str, Any]:
    """Return a copy of the event with the request's ``context`` and ``integrations`` under its own."""
    merged = dict(event)
    for key, defaults in (("context", context), ("integrations", integrations)):
        if not isinstance(defaults, dict):
            continue
        own = event.get(key)
        if own is None:
            merged[key] = dict(defaults)
        elif isinstance(own, dict):
            merged[key] = {**defaults, **own}
    return merged


def _basic_auth_user(header: str) -> str | None:
    """Return the user name of a Basic ``Authorization`` header, which Segment uses as the write key."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0]


def _error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message, **extra}


def _utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loopback_host(host: str) -> str:
    """Return the address to bind, refusing anything but loopback (the control endpoints have no auth)."""
    address = _LOOPBACK_NAMES.get(host.lower(), host)
    try:
        is_loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        is_loopback = False
    if not is_loopback:
        raise ValueError(f"the receiver only binds to a loopback address, got {host!r}")
    return address


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a receiver until SIGINT or SIGTERM, after printing ``listening on <url>``.

    :param argv: the command line arguments, without the program name.
    """
    parser = argparse.ArgumentParser(
        prog="python -m braze_currents.receiver", description="Local Segment-compatible /v1/batch endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other receivers started with this flag; each counts on its own",
    )
    parser.add_argument("--stats-out", help="write the final counters to this JSON file when stopped")
    parser.add_argument("--out", required=True, help="NDJSON file accepted events are appended to")
    key_source = parser.add_mutually_exclusive_group(required=True)
    key_source.add_argument("--write-key", help="write key to accept (visible in process lists)")
    key_source.add_argument("--write-key-env", metavar="VAR", help="environment variable holding the key")
    args = parser.parse_args(argv)

    write_key = args.write_key
    if args.write_key_env is not None:
        write_key = os.environ.get(args.write_key_env, "")
        if not write_key:
            parser.error(f"environment variable {args.write_key_env} is not set or empty")
    try:
        receiver = SegmentReceiver(
            write_key=write_key, out_path=args.out, host=args.host, port=args.port, reuse_port=args.reuse_port
        )
    except ValueError as err:
        parser.error(str(err))

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    with receiver:
        print(f"listening on {receiver.url}", flush=True)
        stop.wait()
    stats = receiver.stats()
    if args.stats_out:
        Path(args.stats_out).write_bytes(orjson.dumps(stats, option=orjson.OPT_NON_STR_KEYS))
    print(f"stopped after {stats['requests']} requests, {stats['accepted']} events accepted", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
