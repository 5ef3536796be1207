"""Child processes for test_hold.py: ``python hold_worker.py MODE ARGS...``.

Each mode runs one role in a multi-process test and reports through its exit
status, its standard output and files the test names. Every loop is bounded
by a deadline passed on the command line.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sys
import time

import daemon as python_daemon

import pidsafe
from pidsafe import _hold
from pidsafe._lock import flock_held


def _check_holding(pidfile: pidsafe.PidFile, path: str) -> str | None:
    """Return what is wrong with a hold just acquired, or None."""
    named = os.stat(path, follow_symlinks=False)
    held = os.fstat(pidfile.fileno())
    if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        return "the name does not refer to the locked inode"
    with open(path, "rb") as stream:
        contents = stream.read()
    if contents != b"%d\n" % os.getpid():
        return f"the file contains {contents!r}"
    return None


def stress(path: str, log: str, holds: int, seconds: float) -> int:
    """Acquire and release `path` until holding it `holds` times.

    Appends "enter PID" after each acquire and "exit PID" before each
    release to `log`, opened with O_APPEND so that lines from all workers
    interleave whole. Any exception other than AlreadyRunning ends the run.
    """
    deadline = time.monotonic() + seconds
    pidfile = pidsafe.PidFile(path)
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    me = os.getpid()
    done = busy = 0
    while done < holds:
        if time.monotonic() > deadline:
            print(f"timed out after {done} holds", file=sys.stderr)
            return 3
        try:
            pidfile.acquire()
        except pidsafe.AlreadyRunning:
            busy += 1
            time.sleep(random.uniform(0, 0.002))
            continue
        os.write(log_fd, b"enter %d\n" % me)
        problem = _check_holding(pidfile, path)
        if problem is not None:
            os.write(log_fd, f"bad {me} {problem}\n".encode())
        os.write(log_fd, b"exit %d\n" % me)
        pidfile.release()
        done += 1
    print(json.dumps({"holds": done, "busy": busy}))
    return 0


def poll_status(path: str, stop: str, seconds: float) -> int:
    """Call status(path) in a loop until the file `stop` exists."""
    deadline = time.monotonic() + seconds
    states: collections.Counter[str] = collections.Counter()
    while not os.path.exists(stop) and time.monotonic() < deadline:
        states[pidsafe.status(path).state] += 1
    print(json.dumps(states))
    return 0


def _kill_self_at(step: str) -> None:
    def hook(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    _hold.step_hook = hook


def kill_at(path: str, step: str) -> int:
    """Acquire `path` and die by SIGKILL at `step` of the acquire."""
    _kill_self_at(step)
    pidsafe.PidFile(path).acquire()
    print(f"step {step} was never reached", file=sys.stderr)
    return 3


def hold(path: str, ready: str, seconds: float) -> int:
    """Hold `path`, create the file `ready`, and wait to be killed."""
    with pidsafe.PidFile(path):
        with open(ready, "w"):
            pass
        time.sleep(seconds)
    return 0


def try_start(path: str, uid: int | None = None) -> int:
    """Try to hold `path` once, as `uid` if given; print a failure as JSON.

    Switching users happens after pidsafe is imported, because the new
    user may not be able to read the interpreter's own files.
    """
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        with pidsafe.PidFile(path):
            return 0
    except pidsafe.PidfileError as exc:
        report = {
            "error": type(exc).__name__,
            "errno": exc.errno,
            "message": str(exc),
            "pid": getattr(exc, "pid", None),
            "exists": os.path.lexists(path),
        }
        print(json.dumps(report))
        return 1


def fork_and_release(path: str) -> int:
    """Hold `path`, fork, and let the child release and exit normally.

    Prints the parent's checks afterwards: whether the name still refers
    to its locked inode and whether the lock is still held.
    """
    with pidsafe.PidFile(path) as pidfile:
        child = os.fork()
        if child == 0:
            # The inherited hold was dropped at fork: releasing is a no-op,
            # and so is leaving the with block through sys.exit.
            pidfile.release()
            sys.exit(0)
        _, status = os.waitpid(child, 0)
        st = os.fstat(pidfile.fileno())
        report = {
            "child_status": status,
            "problem": _check_holding(pidfile, path),
            "locked": flock_held(st),
        }
        print(json.dumps(report))
    return 0


def fork_and_die(path: str, child_pid_file: str, seconds: float) -> int:
    """Hold `path`, fork a long-lived child, then die without releasing.

    The child's PID goes to `child_pid_file`; the child sleeps `seconds`
    unless killed first.
    """
    pidfile = pidsafe.PidFile(path)
    pidfile.acquire()
    child = os.fork()
    if child == 0:
        # Let go of the test's output pipes, which it reads until EOF.
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(seconds)
        os._exit(0)
    with open(child_pid_file, "w") as stream:
        stream.write(f"{child}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    return 3


def daemon(path: str, seconds: float) -> int:
    """Become a daemon with python-daemon, holding `path` as its PID file."""
    with python_daemon.DaemonContext(pidfile=pidsafe.PidFile(path)):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return 0


def main(argv: list[str]) -> int:
    mode, args = argv[0], argv[1:]
    if mode == "stress":
        return stress(args[0], args[1], int(args[2]), float(args[3]))
    if mode == "poll-status":
        return poll_status(args[0], args[1], float(args[2]))
    if mode == "kill-at":
        return kill_at(args[0], args[1])
    if mode == "hold":
        return hold(args[0], args[1], float(args[2]))
    if mode == "try-start":
        return try_start(args[0], int(args[1]) if len(args) > 1 else None)
    if mode == "fork-and-release":
        return fork_and_release(args[0])
    if mode == "fork-and-die":
        return fork_and_die(args[0], args[1], float(args[2]))
    if mode == "daemon":
        return daemon(args[0], float(args[1]))
    print(f"unknown mode {mode!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
