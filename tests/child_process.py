"""Child processes for tests: reaped PIDs, lock holders and bounded reads.

Every wait here is bounded by `WAIT_LIMIT`, and every child is stopped by its
own PID when its block ends, so a broken library or a broken child fails a
test instead of hanging the run.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Upper bound, in seconds, on any wait for a child process.
WAIT_LIMIT = 10.0

#: Poll interval, in seconds, where the kernel offers no blocking wait with
#: a timeout (zombie state).
POLL_INTERVAL = 0.01

#: Python code for a child that prints "ready" and exits when its stdin closes.
WAIT_FOR_STDIN = """
import sys
print("ready", flush=True)
sys.stdin.read()
"""

#: Python code for a child that takes an exclusive ``flock`` on argv[1],
#: writes its own PID there when argv[2] is "write", prints "locked" and
#: keeps the lock until its stdin closes.
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
if sys.argv[2:] == ["write"]:
    os.write(fd, b"%d\\n" % os.getpid())
print("locked", flush=True)
sys.stdin.read()
"""

#: Python code for a child with a second thread: it prints that thread's
#: kernel thread ID and keeps both alive until its stdin closes.
PRINT_THREAD_ID = """
import sys, threading
started = threading.Event()
stop = threading.Event()
thread_ids = []
def run():
    thread_ids.append(threading.get_native_id())
    started.set()
    stop.wait()
worker = threading.Thread(target=run)
worker.start()
started.wait(10)
print(thread_ids[0], flush=True)
sys.stdin.read()
stop.set()
worker.join()
"""


def reaped_pid() -> int:
    """Start a child that exits at once, reap it and return its PID."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=WAIT_LIMIT)
    return child.pid


def read_line(child: subprocess.Popen[str]) -> str:
    """Read one line from `child`'s stdout, waiting at most WAIT_LIMIT."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], WAIT_LIMIT)
    if not ready:
        raise TimeoutError(f"child {child.pid} printed nothing in {WAIT_LIMIT} s")
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"child {child.pid} exited before printing a line")
    return line.strip()


def stop_child(child: subprocess.Popen[str]) -> None:
    """Close `child`'s stdin, wait for it to exit, and kill it if it does not."""
    if child.stdin is not None:
        child.stdin.close()
    try:
        child.wait(timeout=WAIT_LIMIT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=WAIT_LIMIT)
    if child.stdout is not None:
        child.stdout.close()


@contextmanager
def python_child(code: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run Python `code` in a child for the block; yield it and its first line.

    The child must print one line when it is ready and exit when its stdin
    closes, as `HOLD_LOCK` and `PRINT_THREAD_ID` do.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(child)
        yield child, line
    finally:
        stop_child(child)


@contextmanager
def lock_holder(path: os.PathLike[str], *, write_pid: bool) -> Iterator[int]:
    """Hold an exclusive ``flock`` on `path` in a child; yield the child's PID."""
    args = [os.fspath(path)] + (["write"] if write_pid else [])
    with python_child(HOLD_LOCK, *args) as (child, line):
        assert line == "locked"
        yield child.pid


@contextmanager
def zombie() -> Iterator[int]:
    """Yield the PID of a child that has exited but is not yet reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + WAIT_LIMIT
        # WNOWAIT leaves the child a zombie; WNOHANG keeps each poll short.
        flags = os.WEXITED | os.WNOWAIT | os.WNOHANG
        while os.waitid(os.P_PID, child.pid, flags) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {child.pid} did not exit in {WAIT_LIMIT} s")
            time.sleep(POLL_INTERVAL)
        yield child.pid
    finally:
        child.kill()
        child.wait(timeout=WAIT_LIMIT)
