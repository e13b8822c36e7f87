"""Local stand-ins for the outside world: an S3-compatible server and a Segment-compatible receiver.

Used by ``make demo``, the tests and the benchmark. Both listen on free localhost ports.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import orjson

from braze_currents.receiver import SegmentReceiver


def local_s3_client(endpoint: str, *, max_attempts: int | None = None) -> Any:
    """Return a boto3 S3 client for a local S3-compatible endpoint, with moto's dummy credentials.

    :param endpoint: e.g. ``http://127.0.0.1:5000``.
    :param max_attempts: boto3's standard-mode attempts per call; its default when None.
    """
    import boto3
    from botocore.config import Config

    retries = (
        None if max_attempts is None else Config(retries={"mode": "standard", "max_attempts": max_attempts})
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=retries,
    )


class LocalServices:
    """Start a moto S3 server and a Segment receiver; stop both on exit.

    :param workdir: where the receiver writes what it accepted.
    :param bucket: a bucket created on the S3 server.
    """

    def __init__(self, workdir: str | os.PathLike, *, bucket: str = "braze-currents-demo") -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        # A fresh random key each time: it is never printed, and nothing real uses it.
        self.write_key = secrets.token_urlsafe(24)
        self.accepted_path = self.workdir / "segment-accepted.ndjson"
        self._moto: Any = None
        self.receiver: SegmentReceiver | None = None

    def __enter__(self) -> LocalServices:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's access log: one line per request
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accepted_path.unlink(missing_ok=True)
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.s3_endpoint = f"http://{host}:{port}"
        # moto keeps its buckets in process memory, shared by every server started in this process:
        # start from an empty store so one run's objects never leak into the next.
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.s3_endpoint}/moto-api/reset", method="POST"))
        self.receiver = SegmentReceiver(write_key=self.write_key, out_path=self.accepted_path).start()
        self.s3_client().create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if self._moto is not None:
            self._moto.stop()

    def s3_client(self) -> Any:
        return local_s3_client(self.s3_endpoint)

    def connection_env(self) -> dict[str, str]:
        """Return ``AIRFLOW_CONN_*`` variables for the source and Segment connections."""
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
        }
        segment = {
            "conn_type": "segment",
            "host": self.receiver.url,
            "password": self.write_key,
            "extra": {"verify_tls": False},
        }
        return {
            "AIRFLOW_CONN_BRAZE_CURRENTS_S3": orjson.dumps(aws).decode(),
            "AIRFLOW_CONN_SEGMENT_DEFAULT": orjson.dumps(segment).decode(),
        }
