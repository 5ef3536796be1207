"""The state of a PID file's service, and removing the file when stale."""

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
from ._lock import flock_held, flock_held_at
from ._parse import EMPTY_REASON, PidSyntaxError, parse_pid
from ._path import Directory, PathArg, as_trusted, file_reason, open_parent
from ._process import WriterCheck, check_writer
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
    no PID yet), "stale" (the file exists, but its process is gone, its PID
    was reused, or it predates the last boot, as `reason` states),
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

    A file whose ``flock`` is held is "running" (or "starting" while it is
    still empty), whatever PID it contains. Otherwise the PID must name a
    live process that started before the file was written and after the
    last boot. A dead or recycled PID, or an empty unlocked file, is
    "stale". Where the start time is unknown, a live PID counts as running.

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


# Plain PidfileErrors with these errnos describe the path itself (a NUL
# byte, a component that is not a directory, a symlink loop), so the file is
# refused. Any other plain PidfileError is a failed system call (EMFILE,
# EIO, a path that changed during resolution): the verdict is unknown.
_REFUSED_ERRNOS: Final = frozenset((errno.EINVAL, errno.ENOTDIR, errno.ELOOP))


def _error_status(exc: PidfileError, shown: str) -> Status:
    if isinstance(exc, PidfileMissing):
        return Status("absent", shown, reason="no PID file")
    if isinstance(exc, PidfilePermissionError):
        return Status("unknown", shown, reason=exc.reason)
    if type(exc) is PidfileError and exc.errno not in _REFUSED_ERRNOS:
        return Status("unknown", shown, reason=exc.reason)
    return Status("refused", shown, reason=exc.reason)


def _status_at(
    directory: Directory, name: str, shown: str, trusted: frozenset[int]
) -> Status:
    try:
        record = read_at(directory, name, shown, trusted, strict=False)
    except InvalidPidfile as exc:
        if exc.reason == EMPTY_REASON:
            return _empty_status(directory, name, shown)
        return _error_status(exc, shown)
    except PidfileError as exc:
        return _error_status(exc, shown)
    if flock_held_at(record.dev, record.ino):
        return Status("running", shown, record.pid, "lock is held", record)
    try:
        check = check_writer(record.pid, record.mtime_ns)
    except OSError as exc:
        reason = f"cannot check process {record.pid}: {exc}"
        return Status("unknown", shown, record.pid, reason, record)
    if check.stale:
        return Status("stale", shown, record.pid, check.reason, record)
    return Status("running", shown, record.pid, check.reason, record)


def _empty_status(directory: Directory, name: str, shown: str) -> Status:
    try:
        fd, st = open_leaf(directory, name, shown)
    except PidfileError as exc:
        return _error_status(exc, shown)
    os.close(fd)
    held = flock_held(st)
    if held:
        return Status("starting", shown, reason="locked, PID not written yet")
    if held is None:
        reason = "is empty, and /proc/locks is unreadable to tell if it is locked"
        return Status("unknown", shown, reason=reason)
    # A starter that crashed between creating and writing the file left it.
    return Status("stale", shown, reason="is empty and not locked")


def clean_pidfile(
    path: PathArg, *, trusted_uids: Iterable[int] | None = None
) -> Status:
    """Remove the PID file at `path` if it is stale; return what was found.

    The file was removed exactly when the returned state is "stale". It is
    removed only while this call holds its ``flock``, so no holder exists.
    It must be empty or name a PID that `status` would call stale: dead,
    started after the file was written, or written before the last boot.
    The name must still refer to the inode that was locked. A missing file
    gives "absent". A locked file, or a live PID that may be the writer,
    gives "running" (or "starting" for a locked empty file) and is kept.

    Raises `InsecurePidfile` for an untrusted file, which is never removed,
    and the errors of `read_pidfile` for a file that cannot be read.
    """
    trusted = as_trusted(trusted_uids)
    try:
        directory, name, shown = open_parent(path, trusted)
    except PidfileMissing:
        return Status("absent", _display(path), reason="no PID file")
    try:
        return clean_at(directory, name, shown, trusted)
    finally:
        os.close(directory.fd)


def clean_at(
    directory: Directory,
    name: str,
    shown: str,
    trusted: frozenset[int],
    expected: tuple[int, int] | None = None,
) -> Status:
    """Clean `name` in `directory` as `clean_pidfile` does.

    With `expected`, a file whose (st_dev, st_ino) differs is left in
    place and raises `PidfileError`, because it is not the file the
    caller judged.
    """
    try:
        fd, st = open_leaf(directory, name, shown)
    except PidfileMissing:
        return Status("absent", shown, reason="no PID file")
    try:
        if expected is not None and (st.st_dev, st.st_ino) != expected:
            raise PidfileError(
                shown, "was replaced since it was read; left it", errno.EAGAIN
            )
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
        reason = "is empty and not locked"
        if pid is not None:
            check = _check_or_raise(pid, os.fstat(fd).st_mtime_ns, shown)
            if not check.stale:
                return Status("running", shown, pid, check.reason)
            reason = check.reason or reason
        _unlink_locked(directory, name, shown, st)
    finally:
        os.close(fd)
    return Status("stale", shown, pid, reason)


def _check_or_raise(pid: int, mtime_ns: int, shown: str) -> WriterCheck:
    """Return `check_writer(pid, mtime_ns)`; raise its failure as a PidfileError."""
    try:
        return check_writer(pid, mtime_ns)
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
