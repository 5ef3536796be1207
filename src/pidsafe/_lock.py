"""Seeing whether a PID file's ``flock`` is held, without taking it.

A status query that takes the lock, even for a moment, can make a starter's
``flock(LOCK_EX|LOCK_NB)`` fail and report a running instance that does not
exist. On Linux the kernel lists every held lock in ``/proc/locks`` with the
device and inode of its file, so the query reads that list and never touches
the lock. Where the list is unavailable, the result is "unknown" and callers
fall back to other evidence.
"""

from __future__ import annotations

import os
from typing import Final

_LOCKS_PATH: Final = "/proc/locks"


def _device_field(dev: int) -> bytes:
    # /proc/locks prints the device as hexadecimal major:minor.
    return f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()


def flock_held(st: os.stat_result) -> bool | None:
    """Return whether any process holds a ``flock`` on the file `st` describes.

    Returns None when ``/proc/locks`` cannot be read. Waiters (lines marked
    ``->``) are not holders.
    """
    return flock_held_at(st.st_dev, st.st_ino)


def flock_held_at(dev: int, ino: int) -> bool | None:
    """Return whether any process holds a ``flock`` on inode `ino` of `dev`.

    Returns None when ``/proc/locks`` cannot be read, like `flock_held`.
    """
    holders = flock_holders(dev, ino)
    return None if holders is None else bool(holders)


def flock_holders(dev: int, ino: int) -> frozenset[int] | None:
    """Return the PIDs that hold a ``flock`` on inode `ino` of `dev`.

    The kernel lists the process that took each lock. A holder that
    forked shares its lock with the child, but only the one that took
    it is listed. Returns None when ``/proc/locks`` cannot be read.
    """
    try:
        with open(_LOCKS_PATH, "rb") as stream:
            text = stream.read()
    except OSError:
        return None
    expected = _device_field(dev) + b":" + str(ino).encode()
    holders = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter has
        # "->" after the number.
        if len(fields) < 6 or fields[1] != b"FLOCK":
            continue
        if fields[5] == expected:
            holders.add(int(fields[4]))
    return frozenset(holders)
