"""Process liveness.

``kill(pid, 0)`` says whether a PID exists, not whether it is a live process:
on Linux it also succeeds for a thread ID (the kernel accepts any task ID)
and for a zombie that has exited but not been reaped. Where ``/proc`` is
mounted, both are checked there. Liveness fails closed: any error other
than ESRCH (no such process) and EPERM (exists, owned by another user) is
raised, never read as "dead".
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

from ._parse import pid_max


class ProcStatus(NamedTuple):
    """Fields of ``/proc/<pid>/status`` that liveness needs."""

    tgid: int
    state: str  # one letter: R, S, D, Z, T, ...


@functools.lru_cache(maxsize=1)
def procfs_available() -> bool:
    """Return whether ``/proc`` describes this process's PID namespace."""
    try:
        with open("/proc/self/stat", "rb") as stream:
            first = stream.read(32).split(b" ", 1)[0]
    except OSError:
        return False
    return first == str(os.getpid()).encode()


def read_proc_status(pid: int) -> ProcStatus | None:
    """Return Tgid and State of `pid` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as stream:
            text = stream.read(4096)
    except (FileNotFoundError, ProcessLookupError):
        return None
    tgid = -1
    state = "?"
    for line in text.splitlines():
        if line.startswith(b"Tgid:"):
            tgid = int(line.split()[1])
        elif line.startswith(b"State:"):
            state = line.split()[1].decode("ascii", "replace")
    return ProcStatus(tgid, state)


def validate_pid(pid: int) -> None:
    """Raise ValueError unless `pid` is an int in 1..pid_max()."""
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"PID must be an int, not {type(pid).__name__}")
    if not 1 <= pid <= pid_max():
        raise ValueError(f"PID {pid} is outside the range 1..{pid_max()}")


def is_alive(pid: int) -> bool:
    """Return whether `pid` names a live process (not a thread or zombie).

    Fails closed: ``kill(pid, 0)`` failing with ESRCH means dead and EPERM
    means alive (the process belongs to another user); any other error is
    raised. On Linux a thread ID (``Tgid`` differs from the PID) and a
    zombie (state ``Z``) are not live processes, except where /proc hides
    another user's processes (``hidepid=2``): such a task counts as alive,
    because neither can be checked. Raises ValueError for a PID
    outside 1..pid_max, so that 0 and negative numbers never reach ``kill``.
    """
    validate_pid(pid)
    if not _exists(pid):
        return False
    if not procfs_available():
        return True
    status = read_proc_status(pid)
    if status is None:
        # Either the process exited after kill(), or /proc hides it: with
        # hidepid=2 another user's /proc/<pid> does not exist for us. Ask
        # kill() again, so that a hidden process counts as alive (its thread
        # and zombie state cannot be checked) and an exited one as dead.
        return _exists(pid)
    return status.tgid == pid and status.state != "Z"


def _exists(pid: int) -> bool:
    """Return whether kill(pid, 0) finds a task; raise other errors."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
