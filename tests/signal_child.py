"""A child process that records the signals it receives.

Usage: ``python signal_child.py LOG MODE [--thread] [--lock PATH]
[--name NAME] [--exit-after N] [--cleanup SECONDS] [--lifetime SECONDS]``

Every catchable signal in `RECORDED` appends a line "SIGNAME MONOTONIC"
to LOG, opened with O_APPEND, and is otherwise ignored, so that a stray
signal cannot end the child before the test reads its record. MODE sets
what happens next: with "exit", SIGTERM appends "exit MONOTONIC" and
exits with status 0; with "ignore", the child keeps running; with
"rename", every recorded signal changes the command name to "renamed"
and the child keeps running. SIGKILL cannot be recorded, so the parent
reads it from the exit status. MONOTONIC is CLOCK_MONOTONIC in seconds,
which all processes on the machine share.

Options: ``--thread`` starts a second thread and prints its thread ID;
``--lock PATH`` takes an exclusive flock on PATH and writes the child's
PID there; ``--name NAME`` sets the command name; ``--exit-after N``
exits after N recorded signals of any kind; ``--cleanup SECONDS`` makes
an exit wait that long first, as a service that cleans up would. The
child prints one line, "ready" or "ready TID", when it is set up, and
exits by itself after ``--lifetime`` seconds (default 60) so that a
broken test cannot leave it behind.

Only the standard library is used, so that the bench and other users'
interpreters can run this file's source with ``python -c``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import threading
import time
from types import FrameType

RECORDED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTERM,
    signal.SIGALRM,
)


def set_name(name: str) -> None:
    with open("/proc/self/comm", "w") as stream:
        stream.write(name)


class Recorder:
    def __init__(
        self, log: str, mode: str, exit_after: int | None, cleanup: float
    ) -> None:
        self.fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.mode = mode
        self.exit_after = exit_after
        self.cleanup = cleanup
        self.count = 0

    def write(self, text: str) -> None:
        os.write(self.fd, f"{text} {time.monotonic():.6f}\n".encode())

    def exit(self) -> None:
        time.sleep(self.cleanup)
        self.write("exit")
        os._exit(0)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.write(signal.Signals(signum).name)
        self.count += 1
        if self.exit_after is not None and self.count >= self.exit_after:
            self.exit()
        if self.mode == "rename":
            set_name("renamed")
        elif self.mode == "exit" and signum == signal.SIGTERM:
            self.exit()


def start_thread(lifetime: float) -> int:
    started = threading.Event()
    thread_ids: list[int] = []

    def run() -> None:
        # A signal sent to the process goes to any thread that does not
        # block it. Blocking here sends it to the main thread, which runs
        # the handler at once instead of after its sleep.
        signal.pthread_sigmask(signal.SIG_BLOCK, RECORDED)
        thread_ids.append(threading.get_native_id())
        started.set()
        time.sleep(lifetime)

    threading.Thread(target=run, daemon=True).start()
    started.wait(10)
    return thread_ids[0]


def lock_and_write(path: str) -> int:
    """Lock `path`, write this PID into it, and return the fd to keep."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    return fd


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log")
    parser.add_argument("mode", choices=["exit", "ignore", "rename"])
    parser.add_argument("--thread", action="store_true")
    parser.add_argument("--lock")
    parser.add_argument("--name")
    parser.add_argument("--exit-after", type=int)
    parser.add_argument("--cleanup", type=float, default=0.0)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args(argv)

    recorder = Recorder(args.log, args.mode, args.exit_after, args.cleanup)
    for signum in RECORDED:
        signal.signal(signum, recorder.handle)
    if args.name is not None:
        set_name(args.name)
    ready = "ready"
    if args.thread:
        ready = f"ready {start_thread(args.lifetime)}"
    if args.lock is not None:
        lock_and_write(args.lock)
    print(ready, flush=True)
    # time.sleep resumes after each handler, for the time that is left.
    time.sleep(args.lifetime)


if __name__ == "__main__":
    main(sys.argv[1:])
