"""Calls that must return quickly, checked with a time bound."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds a call may take before the test counts it as blocked. A call that
#: does not block needs only a few system calls, so the bound is generous
#: enough for a loaded machine.
BLOCK_LIMIT = 5.0


def call_bounded(func: Callable[..., Any], *args: Any) -> Any:
    """Call `func` in a thread and return its result or the exception it raised.

    Fails the test when the call has not returned after BLOCK_LIMIT seconds.
    The thread is a daemon, so a call stuck in open() or read() cannot keep
    the test process alive.
    """
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(func(*args))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(BLOCK_LIMIT)
    elapsed = time.monotonic() - started

    assert not thread.is_alive(), f"{func.__name__} blocked for {BLOCK_LIMIT} s"
    assert elapsed < BLOCK_LIMIT
    return outcome[0]
