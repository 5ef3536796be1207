"""What a PID file says about its service, and removing it when stale."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from ._errors import (
    InsecurePidfile,
    InvalidPidfile,
    PidfileError,
    PidfileMissing,
    PidfilePermissionError,
)
from ._lock import flock_held
from ._parse import EMPTY_REASON, PidSyntaxError, parse_pid
from ._path import Directory, PathArg, as_trusted, file_reason, open_parent
from ._process import is_alive
from ._read import (
    PidfileRecord,
    logger,
    open_leaf,
    parse_contents,
    read_at,
    read_capped,
)

State = Literal["running", "starting", "stale", "absent", "refused", "unknown"]

#: LSB init-script status codes for each state.
LSB_EXIT_CODES: Final[dict[str, int]] = {
    "running": 0,
    "starting": 0,
    "stale": 1,
    "absent": 3,
    "refused": 4,
    "unknown": 4,
}


@dataclass(frozen=True)
class Status:
    """The state of a PID file's service, with the evidence for it.

    `state` is one of "running", "starting" (the file is locked but holds
    no PID yet), "stale" (the file exists but its process is gone),
    "absent", "refused" (unsafe or malformed; `reason` says why) and
    "unknown" (an error prevented a verdict).
    """

    state: State
    path: str
    pid: int | None = None
    reason: str | None = None
    record: PidfileRecord | None = None

    @property
    def exit_code(self) -> int:
        """LSB status code: 0 running, 1 stale, 3 absent, 4 refused/unknown."""
        return LSB_EXIT_CODES[self.state]


def _display(path: PathArg) -> str:
    text = os.fspath(path)
    return text if isinstance(text, str) else repr(text)


def status(path: PathArg, *, trusted_uids: Iterable[int] | None = None) -> Status:
    """Return the state of the service named by the PID file at `path`.

    Never takes the file's lock, so a query cannot make a concurrent start
    fail. Never raises for a problem with the file or the path: those are
    the "refused" and "unknown" states, with the reason.
    """
    shown = _display(path)
    trusted = as_trusted(trusted_uids)
    try:
        directory, name, shown = open_parent(path, trusted)
    except PidfileError as exc:
        return _error_status(exc, shown)
    try:
        return _status_at(directory, name, shown, trusted)
    finally:
        os.close(directory.fd)


def _error_status(exc: PidfileError, shown: str) -> Status:
    if isinstance(exc, PidfileMissing):
        return Status("absent", shown, reason="no PID file")
    if isinstance(exc, PidfilePermissionError):
        return Status("unknown", shown, reason=exc.reason)
    return Status("refused", shown, reason=exc.reason)


def _status_at(
    directory: Directory, name: str, shown: str, trusted: frozenset[int]
) -> Status:
    try:
        record = read_at(directory, name, shown, trusted, strict=False)
    except InvalidPidfile as exc:
        if exc.reason == EMPTY_REASON and _locked(directory, name, shown):
            return Status("starting", shown, reason="locked, PID not written yet")
        return _error_status(exc, shown)
    except PidfileError as exc:
        return _error_status(exc, shown)
    try:
        alive = is_alive(record.pid)
    except OSError as exc:
        reason = f"cannot check process {record.pid}: {exc}"
        return Status("unknown", shown, record.pid, reason, record)
    if alive:
        return Status("running", shown, record.pid, None, record)
    reason = f"process {record.pid} is not running"
    return Status("stale", shown, record.pid, reason, record)


def _locked(directory: Directory, name: str, shown: str) -> bool:
    try:
        fd, st = open_leaf(directory, name, shown)
    except PidfileError:
        return False
    os.close(fd)
    return bool(flock_held(st))


def clean_pidfile(
    path: PathArg, *, trusted_uids: Iterable[int] | None = None
) -> Status:
    """Remove the PID file at `path` if it is stale; return what was found.

    The file was removed exactly when the returned state is "stale". It is
    removed only while this call holds its ``flock`` (so no holder exists),
    only when its PID is not a live process or it is empty, and only after
    checking that the name still refers to the inode that was locked. A
    missing file gives "absent"; a locked file or a live PID gives
    "running" (or "starting" for a locked empty file) and is kept.

    Raises `InsecurePidfile` for an untrusted file, which is never removed,
    and the errors of `read_pidfile` for a file that cannot be read.
    """
    trusted = as_trusted(trusted_uids)
    try:
        directory, name, shown = open_parent(path, trusted)
    except PidfileMissing:
        return Status("absent", _display(path), reason="no PID file")
    try:
        return _clean_at(directory, name, shown, trusted)
    finally:
        os.close(directory.fd)


def _clean_at(
    directory: Directory, name: str, shown: str, trusted: frozenset[int]
) -> Status:
    try:
        fd, st = open_leaf(directory, name, shown)
    except PidfileMissing:
        return Status("absent", shown, reason="no PID file")
    try:
        reason = file_reason(directory, name, st, trusted)
        if reason is not None:
            raise InsecurePidfile(shown, f"refusing to clean it: {reason}")
        # Holding the lock proves no holder exists, and keeps a starter
        # from taking the file until it is gone.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _held_status(fd, shown)
        except OSError as exc:
            reason = f"cannot lock it: {exc.strerror}"
            raise PidfileError(shown, reason, exc.errno) from None
        pid = _stale_pid(fd, shown)
        if pid is not None and _alive_or_raise(pid, shown):
            return Status("running", shown, pid, None)
        _unlink_locked(directory, name, shown, st)
    finally:
        os.close(fd)
    gone = "empty file" if pid is None else f"process {pid} is not running"
    return Status("stale", shown, pid, gone)


def _alive_or_raise(pid: int, shown: str) -> bool:
    """Return `is_alive(pid)`; raise its failure as a PidfileError."""
    try:
        return is_alive(pid)
    except OSError as exc:
        reason = f"cannot check process {pid}: {exc.strerror}"
        raise PidfileError(shown, reason, exc.errno) from None


def _held_status(fd: int, shown: str) -> Status:
    try:
        pid: int | None = parse_pid(read_capped(fd, shown))
    except PidSyntaxError:
        pid = None
    if pid is None:
        return Status("starting", shown, None, "locked, PID not written yet")
    return Status("running", shown, pid, "lock is held")


def _stale_pid(fd: int, shown: str) -> int | None:
    """Return the PID in the locked file, None if empty; raise if malformed."""
    data = read_capped(fd, shown)
    if not data:
        return None
    return parse_contents(data, shown)


def _unlink_locked(
    directory: Directory, name: str, shown: str, st: os.stat_result
) -> None:
    try:
        now = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise PidfileError(
            shown, "was replaced while being cleaned; left it", errno.EAGAIN
        )
    try:
        os.unlink(name, dir_fd=directory.fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        reason = f"cannot remove it: {exc.strerror}"
        raise PidfileError(shown, reason, exc.errno) from None
    logger.debug("removed stale PID file %s (inode %d)", shown, st.st_ino)
