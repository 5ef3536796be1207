"""Reading and removing PID files through the secure resolver."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from ._errors import (
    InsecurePidfile,
    InvalidPidfile,
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfilePermissionError,
    PidfileSymlink,
    PidfileTooLarge,
)
from ._parse import MAX_PIDFILE_SIZE, PidSyntaxError, parse_pid
from ._path import (
    Directory,
    PathArg,
    as_trusted,
    describe_mode,
    file_reason,
    location_reason,
    open_directory,
    open_parent,
    rejudge_directory,
)

logger = logging.getLogger("pidsafe")

# O_NONBLOCK makes opening a FIFO return at once, with or without a writer.
# O_NOCTTY stops a terminal device from becoming our controlling terminal in
# the moment before fstat rejects it.
_READ_FLAGS: Final = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)

# faccessat with AT_EACCESS judges the effective ids, as openat does.
_CAN_TEST_SEARCH: Final = (
    os.access in os.supports_dir_fd and os.access in os.supports_effective_ids
)

# Errors the silent API turns into None. ValueError covers bad PID values
# and paths with NUL bytes; TypeError covers a path of the wrong type.
_SILENT_ERRORS: Final = (OSError, ValueError, TypeError)


@dataclass(frozen=True)
class PidfileRecord:
    """A PID read from a file, with what was known about the file then."""

    pid: int
    path: str
    uid: int
    mode: int
    mtime: float
    mtime_ns: int
    dev: int
    ino: int
    trusted: bool
    reason: str | None  # why the record is untrusted; None when trusted


def _make_record(
    pid: int, path: str, st: os.stat_result, reason: str | None
) -> PidfileRecord:
    # Positional arguments in field order, because the generated __init__
    # takes twice as long with ten keywords (2.5 against 1.3 µs on CPython
    # 3.11, timed on the machine in bench/README.md).
    return PidfileRecord(
        pid,
        path,
        st.st_uid,
        stat.S_IMODE(st.st_mode),
        st.st_mtime,
        st.st_mtime_ns,
        st.st_dev,
        st.st_ino,
        reason is None,
        reason,
    )


def open_leaf(
    directory: Directory, name: str, display: str
) -> tuple[int, os.stat_result]:
    """Open `name` for reading relative to `directory`; never follow, block.

    Returns the fd (owned by the caller) and its fstat. Raises
    `PidfileMissing`, `PidfileSymlink`, `PidfileNotRegular`,
    `PidfilePermissionError` or `PidfileError`; on error no fd stays open.
    """
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=directory.fd)
    except OSError as exc:
        raise leaf_error(exc, directory, name, display) from None
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = describe_mode(st.st_mode)
        raise PidfileNotRegular(display, f"is a {kind}, not a regular file")
    return fd, st


def leaf_error(
    exc: OSError, directory: Directory, name: str, display: str
) -> PidfileError:
    # Linux reports O_NOFOLLOW on a symlink as ELOOP, FreeBSD as EMLINK.
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return PidfileSymlink(display, "is a symlink, which is never followed")
    if exc.errno == errno.ENOENT:
        return PidfileMissing(display, "does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _permission_error(directory, display)
    if exc.errno in (errno.ENXIO, errno.EOPNOTSUPP):
        # Opening a socket fails with ENXIO (EOPNOTSUPP on the BSDs).
        try:
            st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except OSError:
            pass
        else:
            kind = describe_mode(st.st_mode)
            return PidfileNotRegular(display, f"is a {kind}, not a regular file")
    return PidfileError(display, f"cannot be opened: {exc.strerror}", exc.errno)


def _permission_error(directory: Directory, display: str) -> PidfilePermissionError:
    # openat fails with EACCES both for a file the caller may not read and
    # in a directory the caller may not search, so ask which one it was.
    if _CAN_TEST_SEARCH and not os.access(
        ".", os.X_OK, dir_fd=directory.fd, effective_ids=True
    ):
        return PidfilePermissionError(
            display, f"permission denied searching directory {directory.path}"
        )
    return PidfilePermissionError(display, "permission denied opening it")


def read_capped(fd: int, display: str) -> bytes:
    """Read up to MAX_PIDFILE_SIZE + 1 bytes, so that oversize is visible.

    Raises `PidfileError` naming `display` when read() fails, as it does
    with EIO on a failing disk or network file system.
    """
    chunks = []
    remaining = MAX_PIDFILE_SIZE + 1
    while remaining > 0:
        try:
            chunk = os.read(fd, remaining)
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror}"
            raise PidfileError(display, reason, exc.errno) from None
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def parse_contents(data: bytes, display: str) -> int:
    """Parse `data` read from `display`, raising InvalidPidfile subclasses."""
    if len(data) > MAX_PIDFILE_SIZE:
        raise PidfileTooLarge(display, f"is larger than {MAX_PIDFILE_SIZE} bytes")
    try:
        return parse_pid(data)
    except PidSyntaxError as exc:
        raise InvalidPidfile(display, str(exc)) from None


def read_at(
    directory: Directory,
    name: str,
    display: str,
    trusted: frozenset[int],
    strict: bool,
) -> PidfileRecord:
    """Read and judge `name` inside the resolved `directory`."""
    fd, st = open_leaf(directory, name, display)
    try:
        reason = file_reason(directory, name, st, trusted)
        if strict and reason is not None:
            raise InsecurePidfile(display, f"is untrusted: {reason}")
        # A size that fstat already shows too large is rejected unread.
        if st.st_size > MAX_PIDFILE_SIZE:
            data = b"\0" * (MAX_PIDFILE_SIZE + 1)
        else:
            data = read_capped(fd, display)
    finally:
        os.close(fd)
    pid = parse_contents(data, display)
    return _make_record(pid, display, st, reason)


def read_pidfile(
    path: PathArg,
    *,
    strict: bool = False,
    trusted_uids: Iterable[int] | None = None,
) -> PidfileRecord:
    """Read the PID file at `path` and return its record.

    Every directory on the path is resolved through a file descriptor, the
    final component is never followed, and nothing but a regular file is
    read; FIFOs, sockets and devices are rejected without blocking. The
    contents must be one PID in 1..pid_max (see `parse_pid`).

    The record's `trusted` and `reason` apply the trust policy with
    `trusted_uids` (default: root and the effective uid). With `strict`, an
    untrusted file raises `InsecurePidfile` instead.

    Raises `PidfileMissing`, `PidfileSymlink`, `PidfileNotRegular`,
    `InvalidPidfile`, `PidfileTooLarge`, `InsecurePidfile`, `UnsafeSymlink`,
    `PidfilePermissionError` or `PidfileError`, each naming the path and the
    reason.
    """
    trusted = as_trusted(trusted_uids)
    directory, name, display = open_parent(path, trusted)
    try:
        return read_at(directory, name, display, trusted, strict)
    finally:
        os.close(directory.fd)


def read_pidfile_safely(path: PathArg) -> int | None:
    """Return the PID in the file at `path`, or None, without raising.

    Returns None wherever ``read_pidfile(path, strict=True)`` would raise:
    a missing, symlinked, special, malformed or untrusted file, and a path
    of the wrong type. Use `read_pidfile` to learn the reason. Only
    interpreter-level exceptions such as KeyboardInterrupt or MemoryError
    propagate.
    """
    try:
        return read_pidfile(path, strict=True).pid
    except _SILENT_ERRORS as exc:
        logger.debug("ignoring PID file %s: %s", path, exc)
        return None


def remove_at(
    directory: Directory, name: str, display: str, trusted: frozenset[int]
) -> None:
    """Remove regular file `name` from `directory` after the inode check."""
    try:
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except OSError as exc:
        raise leaf_error(exc, directory, name, display) from None
    if stat.S_ISLNK(st.st_mode):
        raise PidfileSymlink(display, "is a symlink; refusing to remove it")
    if not stat.S_ISREG(st.st_mode):
        kind = describe_mode(st.st_mode)
        raise PidfileNotRegular(display, f"is a {kind}, not a regular file")

    # Where others may write the directory, the name could be swapped for a
    # file someone else cares about, so only our own file is ours to remove.
    # In a shared sticky directory others cannot swap a name we own.
    reason = location_reason(directory, name, st.st_uid, trusted)
    if reason is not None and st.st_uid != os.geteuid():
        raise InsecurePidfile(display, f"refusing to remove it: {reason}")

    # A user who may write the directory can also remove or rename the file
    # between the two lstats.
    try:
        again = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except OSError as exc:
        raise leaf_error(exc, directory, name, display) from None
    # NOTE: where others may write the directory, they can still swap the
    # name after this check, and the unlink then removes their entry
    # instead. unlinkat never follows a symlink, so a symlink's target stays.
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
        raise PidfileError(
            display, "was replaced while being removed; left it", errno.EAGAIN
        )
    try:
        os.unlink(name, dir_fd=directory.fd)
    except OSError as exc:
        # The lstats above succeeded, so the directory is searchable, and
        # the unlink failed for lack of write permission or the sticky bit.
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise PidfilePermissionError(
                display,
                f"permission denied removing it from directory {directory.path}",
            ) from None
        raise leaf_error(exc, directory, name, display) from None
    logger.debug("removed PID file %s (inode %d)", display, st.st_ino)


def remove_pidfile(path: PathArg, *, trusted_uids: Iterable[int] | None = None) -> None:
    """Remove the PID file at `path`, raising on failure.

    Removes only a regular file, relative to its directory's fd, after
    checking that the name still refers to the inode it inspected. In an
    untrusted location it removes only a file owned by the caller. Raises
    the same exceptions as `read_pidfile` (never `InvalidPidfile`: the
    contents are not read).
    """
    trusted = as_trusted(trusted_uids)
    directory, name, display = open_parent(path, trusted)
    try:
        remove_at(directory, name, display, trusted)
    finally:
        os.close(directory.fd)


def unlink_pidfile_safely(path: PathArg) -> None:
    """Remove the PID file at `path` like `remove_pidfile`, without raising.

    Every OSError, ValueError and TypeError is logged at DEBUG level and
    dropped; only interpreter-level exceptions such as KeyboardInterrupt or
    MemoryError propagate.
    """
    try:
        remove_pidfile(path)
    except _SILENT_ERRORS as exc:
        logger.debug("left PID file %s: %s", path, exc)


class PidDirectory:
    """A securely resolved directory for reading and removing many PID files.

    The path is resolved and judged once; each call then works through the
    held directory fd with one extra ``fstat`` that re-checks the directory's
    own owner and mode (the directories above it are not re-checked). Names
    must be single path components. Close it, or use it as a context manager.
    """

    def __init__(
        self, path: PathArg, *, trusted_uids: Iterable[int] | None = None
    ) -> None:
        self._trusted = as_trusted(trusted_uids)
        directory = open_directory(path, self._trusted)
        try:
            st = os.fstat(directory.fd)
        except BaseException:
            os.close(directory.fd)
            raise
        self._directory: Directory | None = directory
        self._owner_mode = (st.st_uid, st.st_mode)

    @property
    def path(self) -> str:
        """Physical path of the directory as resolved."""
        return self._current().path

    def fileno(self) -> int:
        """Return the directory fd, which this object owns."""
        return self._current().fd

    def _current(self) -> Directory:
        if self._directory is None:
            raise ValueError("PidDirectory is closed")
        return self._directory

    def _checked(self, name: str) -> tuple[Directory, str]:
        directory = self._current()
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a single file name")
        display = f"{directory.path.rstrip('/')}/{name}"
        if "\0" in name:
            raise PidfileError(display, "path contains a NUL byte", errno.EINVAL)
        # One fstat notices a chmod or chown of the directory since it was
        # judged, and re-judges it from its new owner and mode.
        st = os.fstat(directory.fd)
        if (st.st_uid, st.st_mode) != self._owner_mode:
            directory = rejudge_directory(directory, st, self._trusted)
            self._directory = directory
            self._owner_mode = (st.st_uid, st.st_mode)
        return directory, display

    def read(self, name: str, *, strict: bool = False) -> PidfileRecord:
        """Read `name` as `read_pidfile` would; raises the same errors."""
        directory, display = self._checked(name)
        return read_at(directory, name, display, self._trusted, strict)

    def read_safely(self, name: str) -> int | None:
        """Return the PID in `name` or None, as `read_pidfile_safely`."""
        try:
            return self.read(name, strict=True).pid
        except _SILENT_ERRORS as exc:
            logger.debug("ignoring PID file %s: %s", name, exc)
            return None

    def remove(self, name: str) -> None:
        """Remove `name` as `remove_pidfile` would; raises the same errors."""
        directory, display = self._checked(name)
        remove_at(directory, name, display, self._trusted)

    def close(self) -> None:
        """Close the directory fd; later calls raise ValueError."""
        # getattr: __del__ also runs when __init__ raised before assigning.
        directory = getattr(self, "_directory", None)
        if directory is not None:
            self._directory = None
            os.close(directory.fd)

    def __enter__(self) -> PidDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
