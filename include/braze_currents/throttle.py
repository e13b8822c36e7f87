"""Cap the requests and events per second sent to Segment for one Current, across threads and tasks.

Segment asks a workspace to stay near 1,000 events/s unless agreed otherwise, and partner sources under
50 requests/s. Each Current may set ``rate_limit: {requests_per_second, events_per_second}``; every
upload task of that Current running in the same process takes its turn from one shared limiter.

.. note::
    The limiter lives in one process. Airflow usually runs each task in a process of its own, so with
    several upload tasks (or workers) running at once the Current's total rate is the cap times the
    number of those tasks: divide the cap by that number, or put the upload tasks in an Airflow pool
    with one slot per share of the cap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Space out batches so requests and events stay under their caps, on average and at every moment.

    Each batch reserves the earliest moment both caps allow, then waits for it outside the lock, so
    concurrent senders queue in order. Unused time is not saved up: after an idle spell the next batch
    goes at once, and the ones after it are spaced again (no burst).

    :param requests_per_second: the most requests a second, or None for no cap.
    :param events_per_second: the most events a second, or None for no cap.
    :param clock: a monotonic clock in seconds (tests pass their own).
    :param sleep: how to wait (tests pass their own).
    """

    def __init__(
        self,
        *,
        requests_per_second: float | None = None,
        events_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        for name, value in (
            ("requests_per_second", requests_per_second),
            ("events_per_second", events_per_second),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be above 0, got {value!r}")
        self.requests_per_second = requests_per_second
        self.events_per_second = events_per_second
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next_request = 0.0
        self._next_event = 0.0
        self.waited = 0.0

    @property
    def enabled(self) -> bool:
        return self.requests_per_second is not None or self.events_per_second is not None

    def reserve(self, events: int) -> float:
        """Reserve the moment a batch of ``events`` may go; return the seconds to wait for it."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_request, self._next_event)
            if self.requests_per_second is not None:
                self._next_request = start + 1.0 / self.requests_per_second
            if self.events_per_second is not None:
                self._next_event = start + events / self.events_per_second
            wait = start - now
            self.waited += wait
            return wait

    def acquire(self, events: int) -> None:
        """Wait until a batch of ``events`` may be sent.

        :param events: the events in the batch.
        """
        wait = self.reserve(events)
        if wait > 0:
            self._sleep(wait)


_shared: dict[str, RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(
    current: str, *, requests_per_second: float | None = None, events_per_second: float | None = None
) -> RateLimiter | None:
    """Return the process-wide limiter of a Current, or None when it has no cap.

    Every caller with the same Current and caps gets the same limiter; changed caps (a new config)
    start a new one.

    :param current: the Current's name.
    :param requests_per_second: the most requests a second, or None.
    :param events_per_second: the most events a second, or None.
    """
    if requests_per_second is None and events_per_second is None:
        return None
    with _shared_lock:
        limiter = _shared.get(current)
        caps = (requests_per_second, events_per_second)
        if limiter is None or (limiter.requests_per_second, limiter.events_per_second) != caps:
            limiter = RateLimiter(
                requests_per_second=requests_per_second, events_per_second=events_per_second
            )
            _shared[current] = limiter
        return limiter
