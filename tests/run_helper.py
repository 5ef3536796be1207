"""Commands for test_run.py to run under ``pidsafe run``.

``python run_helper.py MODE READY [ARGS...]``. Each mode writes a JSON report
to the file READY once it is ready (through a rename, so the test never
reads half of it), then does its part. Every wait is bounded by
`MAX_SECONDS`, so a helper that the test fails to stop still exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

MAX_SECONDS = 60.0

RECORDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTERM,
)


def _ready(path: str, **report: Any) -> None:
    report["pid"] = os.getpid()
    report["ppid"] = os.getppid()
    partial = f"{path}.partial"
    with open(partial, "w") as stream:
        json.dump(report, stream)
    os.replace(partial, path)


def _sleep() -> int:
    deadline = time.monotonic() + MAX_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def wait(ready: str) -> int:
    """Report, then sleep until killed (default signal actions)."""
    _ready(ready)
    return _sleep()


def record(ready: str, log: str) -> int:
    """Append the name of each signal received to `log`; exit 0 on SIGTERM."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def handle(signum: int, frame: FrameType | None) -> None:
        os.write(fd, f"{signal.Signals(signum).name}\n".encode())
        if signum == signal.SIGTERM:
            sys.exit(0)

    for signum in RECORDED_SIGNALS:
        signal.signal(signum, handle)
    _ready(ready)
    return _sleep()


def describe(ready: str) -> int:
    """Report the open fds and what they refer to, then exit 0."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the fd listdir itself used, closed by now
    _ready(ready, fds=fds)
    return 0


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "wait":
        return wait(args[0])
    if mode == "record":
        return record(args[0], args[1])
    if mode == "describe":
        return describe(args[0])
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
