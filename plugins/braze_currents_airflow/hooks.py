"""Hooks: the Segment connection, and the S3 access the core needs."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseHook

from braze_currents.segment_client import REGION_ENDPOINTS, RetryPolicy, SegmentClient, endpoint_for

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class SegmentConnectionError(ValueError):
    """The Segment connection is missing or unusable; retrying cannot help, so tasks fail at once."""


class SegmentHook(BaseHook):
    """Reach Segment's HTTP Tracking API with a write key kept in an Airflow connection.

    The write key is the connection's password (so Airflow masks it). The region comes from the
    connection's extra ``region`` (the Region field of the ``segment`` connection form) or the
    caller; an explicit host (connection host) overrides both, for example a local Segment-compatible
    receiver. TLS verification can be turned off only for a local host, with the extra
    ``verify_tls: false``. A connection of any type with the write key as password works too, for
    installs without the ``segment`` connection type.

    :param segment_conn_id: the Airflow connection id.
    :param region: ``us`` or ``eu``, used when the connection names neither host nor region.
    """

    conn_name_attr = "segment_conn_id"
    default_conn_name = "segment_default"
    conn_type = "segment"
    hook_name = "Segment"

    def __init__(self, segment_conn_id: str = default_conn_name, region: str = "us", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segment_conn_id = segment_conn_id
        self.region = region

    @cached_property
    def _conn(self) -> Any:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.segment_conn_id)
        except AirflowNotFoundException:
            env = "AIRFLOW_CONN_" + self.segment_conn_id.upper()
            raise SegmentConnectionError(
                f"Segment connection {self.segment_conn_id!r} is not defined: add it under Admin > "
                f"Connections (type Segment, write key in the password field), or set {env}, or "
                "change segment.conn_id in the exports config"
            ) from None

    def _region(self) -> str:
        extra = self._conn.extra_dejson or {}
        return extra.get("region") or extra.get(f"extra__{self.conn_type}__region") or self.region

    def describe(self) -> str:
        """Name the connection and where it points, for error messages; never the key."""
        return f"connection {self.segment_conn_id!r} ({self.endpoint()})"

    def endpoint(self) -> str:
        conn = self._conn
        host = conn.host
        if host and conn.port and "://" in host and not urlparse(host).port:
            host = f"{host.rstrip('/')}:{conn.port}"
        elif host and conn.port and "://" not in host:
            host = f"{host}:{conn.port}"
        region = self._region()
        if not host and region not in REGION_ENDPOINTS:
            raise ValueError(
                f"Segment connection {self.segment_conn_id!r}: region must be us or eu, got {region!r}"
            )
        return endpoint_for(region=region, host=host or None)

    def get_client(self, *, policy: RetryPolicy | None = None, pool_size: int = 8) -> SegmentClient:
        """Return a Segment client for this connection."""
        conn = self._conn
        write_key = conn.password or conn.login
        if not write_key:
            raise SegmentConnectionError(
                f"Segment connection {self.segment_conn_id!r} has no write key: put it in the password field"
            )
        extra = conn.extra_dejson or {}
        endpoint = self.endpoint()
        verify = extra.get("verify_tls", True) not in (False, "false", "False")
        if not verify and urlparse(endpoint).hostname not in _LOCAL_HOSTS:
            raise ValueError(
                f"Segment connection {self.segment_conn_id!r}: verify_tls may be off only for a local host"
            )
        timeout = float(extra.get("timeout", 30))
        return SegmentClient(
            endpoint=endpoint,
            write_key=write_key,
            policy=policy,
            timeout=(5.0, timeout),
            verify=verify,
            pool_size=pool_size,
        )
