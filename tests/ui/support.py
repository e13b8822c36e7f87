"""Small helpers shared by the UI tests: free ports and polling with a deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

# The one user of the api-server under test (simple auth manager, role admin).
USER = "ops"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    check: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.5,
    ignore: tuple[type[BaseException], ...] = (Exception,),
) -> Any:
    """Poll ``check()`` until it returns something truthy and return that; fail after ``timeout``.

    :param what: named in the failure message.
    :param ignore: exceptions that mean "not yet"; any other propagates at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except ignore as exc:
            last_error, result = exc, None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")
