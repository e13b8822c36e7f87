"""Shared test helpers: a generated window in the moto server and what Segment should end up with."""

from __future__ import annotations

import io
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
import yaml

from braze_currents.generator import avro_schema, encode_avro, generate_records, s3_put, write_window
from braze_currents.keys import build_key

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "currents"
TYPES = (
    "users.messages.email.Send",
    "users.messages.email.Open",
    "users.messages.sms.Delivery",
    "users.messages.pushnotification.Send",
    "users.canvas.Entry",
)


def expected_ids(records: list[dict[str, Any]], seen: set[str]) -> set[str]:
    """The ids the pipeline must send: external id present, first occurrence only."""
    out = set()
    for record in records:
        external = record.get("external_user_id")
        if external is None or not external.strip() or record["id"] in seen:
            continue
        seen.add(record["id"])
        out.add(record["id"])
    return out


def decode_prefix(data: bytes) -> list[dict[str, Any]]:
    """Decode as many records as a (possibly truncated) file yields."""
    records = []
    try:
        for record in fastavro.reader(io.BytesIO(data)):
            records.append(record)
    except Exception:
        pass
    return records


def write_hostile_window(client: Any, bucket: str, hour: datetime, *, events_per_type: int = 400) -> dict:
    """Write one hour with nulls, duplicates, a 40 KB event and a truncated file; return expectations."""
    put = s3_put(client, bucket)
    written: dict[str, bytes] = {}

    def keep(key: str, data: bytes) -> None:
        written[key] = data
        put(key, data)

    files = write_window(keep, prefix=PREFIX, hour=hour, event_types=TYPES, events_per_type=events_per_type)
    seen: set[str] = set()
    expected: set[str] = set()
    read = 0
    for generated in files:
        records = decode_prefix(written[generated.key])
        read += len(records)
        expected |= expected_ids(records, seen)

    rng = random.Random(7)
    big = generate_records("users.messages.email.Send", 3, hour=hour, rng=rng, null_external_ratio=0)
    for record in big:
        record["external_user_id"] = "cust-big"
    big[1]["campaign_name"] = "x" * 40_000
    big_key = build_key(prefix=PREFIX, integration_id="a" * 24, event_type=TYPES[0], hour=hour, offset=1)
    put(big_key, encode_avro(big, avro_schema(TYPES[0])))
    read += 3
    expected |= {big[0]["id"], big[2]["id"]}

    many = generate_records("users.canvas.Entry", 3000, hour=hour, rng=rng, null_external_ratio=0)
    data = encode_avro(many, avro_schema("users.canvas.Entry"), block_size=500)
    truncated = data[: len(data) * 2 // 3]
    cut_key = build_key(
        prefix=PREFIX, integration_id="b" * 24, event_type="users.canvas.Entry", hour=hour, offset=9
    )
    put(cut_key, truncated)
    survivors = decode_prefix(truncated)
    assert 0 < len(survivors) < len(many)
    read += len(survivors)
    expected |= expected_ids(survivors, seen)
    return {
        "expected_ids": expected,
        "read": read,
        "big_id": big[1]["id"],
        "truncated_key": cut_key,
        "files": len(files) + 2,
    }


def current_entry(
    name: str, *, bucket: str, workdir: Path | str, prefix: str = PREFIX, event_types=TYPES, **overrides: Any
) -> dict[str, Any]:
    """One Current of an exports config whose staging, state and dead letters live in ``workdir``
    (a folder, or an ``s3://`` location)."""
    work = str(workdir).rstrip("/")
    return {
        "name": name,
        "start_date": "2026-01-01T00:00:00Z",
        "source": {"conn_id": "braze_currents_s3", "bucket": bucket, "prefix": prefix},
        "event_types": list(event_types),
        "segment": {"conn_id": "segment_default", "region": "us"},
        "staging": f"{work}/staging",
        "dead_letters": f"{work}/dead_letters",
        "state": f"{work}/state",
        "mapping_file": str(ROOT / "include" / "segment_mapping.yaml"),
        "chunk_events": 2500,
        "retries": 0,
        **overrides,
    }


def write_config(path: Path, *, bucket: str, workdir: Path, **overrides: Any) -> Path:
    """Write an exports config for one Current named ``test`` that uses ``workdir`` for its state."""
    entry = current_entry("test", bucket=bucket, workdir=workdir, **overrides)
    path.write_text(yaml.safe_dump({"currents": [entry]}))
    return path


class FlakyProxy:
    """An HTTP proxy on loopback in front of the moto server that can fail the next requests.

    Stands in for an S3 endpoint that is down for a while: ``fail_next(n)`` answers the next ``n``
    requests with 503 SlowDown (or drops them), then traffic flows to the real server again.
    """

    def __init__(self, upstream: str) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        proxy = self
        self.requests = 0
        self.failed = 0
        self._fail = 0
        self._drop = False
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests += 1
                    failing = proxy._fail > 0
                    if failing:
                        proxy._fail -= 1
                        proxy.failed += 1
                if failing and proxy._drop:
                    self.close_connection = True
                    return
                if failing:
                    payload = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, count: int, *, drop: bool = False) -> None:
        with self._lock:
            self._fail, self._drop = count, drop

    def s3_client(self, max_attempts: int = 3) -> Any:
        from braze_currents.localstack import local_s3_client

        return local_s3_client(self.url, max_attempts=max_attempts)
