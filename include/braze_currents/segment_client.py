"""Post batch bodies to Segment's HTTP API with one clear retry policy.

Policy, all in :class:`RetryPolicy`: 2xx is done; 400 and 413 are final for that body (the caller
splits it to isolate the refused event); 401 and 403 are final for the whole run (a bad or revoked
key); 429 waits for ``Retry-After``; other 5xx, timeouts and dropped connections back off
exponentially from 0.5 s, doubling up to 60 s; 501 and 505 are final.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

log = logging.getLogger(__name__)

REGION_ENDPOINTS = {
    "us": "https://api.segment.io",
    "eu": "https://events.eu1.segmentapis.com",
}


class SegmentError(Exception):
    """Base of the errors this client raises."""


class SegmentAuthError(SegmentError):
    """Segment refused the write key (401/403): retrying cannot help."""


class SegmentRejectedError(SegmentError):
    """Segment refused this body (400/413): sending it again unchanged cannot help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"Segment answered {status}: {detail}")
        self.status = status
        self.detail = detail


class SegmentUnavailableError(SegmentError):
    """Every attempt failed with a retriable error."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which answers are retried, and how long to wait between attempts.

    :param max_attempts: attempts per body, the first included.
    :param backoff_base: the first wait in seconds.
    :param backoff_max: the longest wait in seconds, ``Retry-After`` included.
    :param jitter: the share of each wait that is randomised, to spread concurrent clients.
    """

    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    jitter: float = 0.1
    final_statuses: frozenset[int] = frozenset({400, 401, 403, 404, 413, 501, 505})

    def is_retriable(self, status: int) -> bool:
        return status == 429 or (status >= 500 and status not in self.final_statuses) or status == 408

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), self.backoff_max)
            except ValueError:
                pass
        wait = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
        return wait * (1 - self.jitter * random.random())


def endpoint_for(region: str | None = None, host: str | None = None) -> str:
    """Return the batch endpoint for a region (``us``/``eu``) or an explicit host.

    :raises ValueError: for an unknown region with no host.
    """
    if host:
        base = host if "://" in host else f"https://{host}"
        return base.rstrip("/") + "/v1/batch"
    if region not in REGION_ENDPOINTS:
        raise ValueError(f"Segment region must be one of {sorted(REGION_ENDPOINTS)}, got {region!r}")
    return REGION_ENDPOINTS[region] + "/v1/batch"


@dataclasses.dataclass
class SendStats:
    """Requests made and time spent waiting, for reports and tests."""

    requests: int = 0
    retries: int = 0
    waited: float = 0.0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)


class SegmentClient:
    """Send batch bodies to one Segment endpoint.

    :param endpoint: the full ``.../v1/batch`` URL.
    :param write_key: the source's write key; sent only in the Authorization header.
    :param policy: the retry policy.
    :param timeout: connect and read timeouts in seconds.
    :param verify: TLS verification; turn off only for a local endpoint.
    :param sleep: how to wait between attempts (tests pass an event's wait).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        write_key: str,
        policy: RetryPolicy | None = None,
        timeout: tuple[float, float] = (5.0, 30.0),
        verify: bool = True,
        sleep: Callable[[float], Any] = time.sleep,
        pool_size: int = 8,
    ) -> None:
        if not write_key:
            raise ValueError("the Segment write key is empty")
        self.endpoint = endpoint
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.verify = verify
        self.sleep = sleep
        self.stats = SendStats()
        self._lock = threading.Lock()
        self._auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        # Proxies and CA bundle from the environment (HTTPS_PROXY, REQUESTS_CA_BUNDLE, ...) are looked
        # up once here rather than on every request, as requests would.
        settings = self._session.merge_environment_settings(endpoint, {}, None, verify, None)
        self._proxies, self._verify = settings["proxies"], settings["verify"]
        self._session.trust_env = False

    def __repr__(self) -> str:  # never show the key
        return f"SegmentClient(endpoint={self.endpoint!r})"

    def close(self) -> None:
        self._session.close()

    def _count(self, status: int | None, waited: float = 0.0, retry: bool = False) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.retries += int(retry)
            self.stats.waited += waited
            if status is not None:
                self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1

    def send(self, body: bytes) -> int:
        """Post one batch body; return the number of attempts it took.

        :raises SegmentAuthError: on 401/403.
        :raises SegmentRejectedError: on 400/413 or another final status.
        :raises SegmentUnavailableError: when every attempt failed with a retriable error.
        """
        headers = {"Content-Type": "application/json", "Authorization": self._auth}
        last = ""
        for attempt in range(1, self.policy.max_attempts + 1):
            headers["X-Retry-Count"] = str(attempt - 1)
            retry_after = None
            try:
                response = self._session.post(
                    self.endpoint,
                    data=body,
                    headers=headers,
                    timeout=self.timeout,
                    verify=self._verify,
                    proxies=self._proxies,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._count(None, retry=attempt > 1)
                last = type(exc).__name__
            else:
                status = response.status_code
                self._count(status, retry=attempt > 1)
                if 200 <= status < 300:
                    return attempt
                if status in (401, 403):
                    raise SegmentAuthError(f"Segment refused the write key with {status}")
                if not self.policy.is_retriable(status):
                    raise SegmentRejectedError(status, response.text[:300])
                retry_after = response.headers.get("Retry-After")
                last = f"HTTP {status}"
            if attempt == self.policy.max_attempts:
                break
            wait = self.policy.delay(attempt, retry_after)
            log.info("Segment attempt %s failed (%s); retrying in %.1fs", attempt, last, wait)
            with self._lock:
                self.stats.waited += wait
            self.sleep(wait)
        raise SegmentUnavailableError(f"{self.policy.max_attempts} attempts failed, the last with {last}")
