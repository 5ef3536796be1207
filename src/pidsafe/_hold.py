"""Creating and holding a PID file.

Design note. The holder keeps the PID file open with ``flock(LOCK_EX)`` on
it, after FreeBSD's ``pidfile_open``. The kernel drops the lock when the
last descriptor of the open file goes away, so the lock ends with its holder
however the holder dies. A second starter learns of the first from a failed
``LOCK_NB`` instead of trusting a PID. Readers see the lock in
``/proc/locks`` without taking it.

Rejected alternatives: ``O_EXCL`` creation alone leaves a crashed holder's
file indistinguishable from a live one except through its PID. POSIX record
locks (``fcntl``/``lockf``) vanish when the process closes any descriptor of
the file, which a status query inside the holder would do. A separate lock
file gives readers two names to keep consistent.

What can still fail: ``flock`` is advisory, so a program that writes the
same file without locking it is noticed only through the identity rule
(its process started before the file was written). On NFS, ``flock`` is
emulated with byte-range locks and depends on the lock daemon.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, NamedTuple

from ._errors import (
    AlreadyRunning,
    InsecurePidfile,
    PidfileError,
    PidfileNotRegular,
    PidfilePermissionError,
)
from ._parse import PidSyntaxError, parse_pid
from ._path import (
    Directory,
    PathArg,
    as_trusted,
    describe_mode,
    file_reason,
    open_parent,
)
from ._process import check_writer, is_alive, validate_pid
from ._read import leaf_error, logger, read_capped

# O_NONBLOCK keeps a FIFO planted at the name from blocking the open, and
# O_NOCTTY keeps a terminal from becoming our controlling terminal before
# fstat rejects it. O_NOFOLLOW makes a symlink at the name fail with ELOOP.
_OPEN_FLAGS: Final = (
    os.O_RDWR
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CREATE_FLAGS: Final = _OPEN_FLAGS | os.O_CREAT | os.O_EXCL

#: Attempts to open and lock the file before giving up, for a name that is
#: removed or replaced between our open and our lock every time.
MAX_ATTEMPTS: Final = 100

#: Seconds a starter waits on a locked file for the holder to write its PID,
#: or for a cleaner that locked a dead holder's file to remove it.
CONTENTION_WAIT: Final = 1.0

_FIRST_BACKOFF: Final = 0.001
_MAX_BACKOFF: Final = 0.05

# Permission bits that would let someone other than the owner write the file
# or that are meaningless for a PID file.
_FORBIDDEN_MODE_BITS: Final = ~0o755

#: Test seam: when set, `acquire` calls it with "opened" (the file exists
#: and passed its checks, not yet locked), "locked", "truncated" and
#: "written", so that tests can kill or pause a starter at an exact point.
#: Replacing the PID in a held file also calls it with "truncated".
step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    hook = step_hook
    if hook is not None:
        hook(name)


class _Backoff:
    """Sleeps of growing length until a deadline, for retrying a contended lock."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.delay = _FIRST_BACKOFF

    def sleep(self) -> bool:
        """Sleep once; return False without sleeping when time is up."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(self.delay, remaining))
        self.delay = min(self.delay * 2, _MAX_BACKOFF)
        return True


class _Target(NamedTuple):
    """The PID file being acquired: its resolved directory and name."""

    directory: Directory  # the caller of acquire owns directory.fd
    name: str
    display: str  # the path as given, for messages
    trusted: frozenset[int]


def _open_error(exc: OSError, target: _Target) -> PidfileError:
    display = target.display
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PidfilePermissionError(display, _permission_reason(target))
    if exc.errno == errno.EROFS:
        return PidfileError(
            display,
            f"cannot open it for writing: the file system holding "
            f"{target.directory.path} is read-only",
            exc.errno,
        )
    if exc.errno == errno.EISDIR:
        return PidfileNotRegular(display, "is a directory, not a regular file")
    # Symlinks, sockets and other errors read the same as for a plain read.
    return leaf_error(exc, target.directory, target.name, display)


def _permission_reason(target: _Target) -> str:
    try:
        st = os.stat(target.name, dir_fd=target.directory.fd, follow_symlinks=False)
    except OSError:
        return f"permission denied creating it in directory {target.directory.path}"
    if st.st_uid != os.geteuid():
        return (
            f"permission denied opening it: it is owned by uid {st.st_uid}; "
            "remove it or choose another path"
        )
    return "permission denied opening it"


def _open_pidfile(target: _Target, mode: int) -> tuple[int, bool]:
    """Open or create the file; return the fd and whether this call created it.

    Trying ``O_EXCL`` first distinguishes a file that this call created,
    and may remove on failure, from one that was already there. Never
    follows a symlink at the name.

    An existing file is opened without ``O_CREAT``, so Linux's
    fs.protected_regular, which rejects ``O_CREAT`` on another user's file
    in a sticky directory, never applies. Such a file fails here with
    EACCES, reported with its owner, or fails the owner check after the
    open.
    """
    dir_fd = target.directory.fd
    for _ in range(MAX_ATTEMPTS):
        try:
            return os.open(target.name, _CREATE_FLAGS, mode, dir_fd=dir_fd), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise _open_error(exc, target) from None
        try:
            return os.open(target.name, _OPEN_FLAGS, dir_fd=dir_fd), False
        except FileNotFoundError:
            continue  # removed since the O_EXCL attempt; create it again
        except OSError as exc:
            raise _open_error(exc, target) from None
    raise _churn_error(target.display)


def _churn_error(display: str) -> PidfileError:
    return PidfileError(
        display,
        f"was removed or replaced {MAX_ATTEMPTS} times while acquiring it; "
        "another program keeps changing it",
        errno.EAGAIN,
    )


def _check_opened(fd: int, target: _Target) -> bool:
    """Raise unless the open file is a regular file we own and may trust.

    Returns False when the file has been removed since we opened it (the
    previous holder released it), so that the caller starts over.
    """
    display = target.display
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = describe_mode(st.st_mode)
        raise PidfileNotRegular(display, f"is a {kind}, not a regular file")
    if st.st_uid != os.geteuid():
        raise InsecurePidfile(
            display,
            f"is owned by uid {st.st_uid}, not by this process's uid "
            f"{os.geteuid()}; refusing to hold another user's file",
        )
    if st.st_nlink == 0:
        return False
    reason = file_reason(target.directory, target.name, st, target.trusted)
    if reason is not None:
        raise InsecurePidfile(display, f"refusing to hold it: {reason}")
    return True


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_error(fd: int, display: str, backoff: _Backoff) -> AlreadyRunning | None:
    """Return the error for a file another process has locked.

    Returns None after a short sleep when the caller should try again: the
    holder has not written its PID yet, or the file names a dead process
    (a cleaner holding the lock while it removes the file).
    """
    data = read_capped(fd, display)
    if not data:
        if backoff.sleep():
            return None
        return AlreadyRunning(
            display,
            "is locked by another process that has not written its PID "
            f"within {CONTENTION_WAIT} s; its PID is unknown",
        )
    try:
        pid = parse_pid(data)
    except PidSyntaxError as exc:
        return AlreadyRunning(
            display,
            f"is locked by another process, and its contents are invalid: {exc}",
        )
    if is_alive(pid):
        return AlreadyRunning(
            display,
            f"is locked by process {pid}, so another instance is running; "
            "stop it before starting a new one",
            pid=pid,
        )
    if backoff.sleep():
        return None
    return AlreadyRunning(
        display,
        f"is locked, but names process {pid}, which is not running; a "
        "process that inherited the lock still holds it",
    )


def _same_file(target: _Target, st: os.stat_result) -> bool:
    try:
        now = os.stat(target.name, dir_fd=target.directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _check_unlocked(fd: int, st: os.stat_result, display: str) -> None:
    """Raise AlreadyRunning unless the unlocked file we now lock is stale.

    The file is stale when it is empty (a starter died between creating and
    writing it) or malformed. It is also stale when it names this process
    (a container restarted with the same PID), a dead process, or a process
    that started after the file was written, and when it was written before
    the last boot. A live process that started before the write is a
    writer that does not lock, and the file stays untouched.
    """
    # A file this process just created is empty, and fstat already shows it.
    data = read_capped(fd, display) if st.st_size else b""
    if not data:
        logger.debug("taking over empty PID file %s", display)
        return
    try:
        pid = parse_pid(data)
    except PidSyntaxError as exc:
        logger.debug("taking over malformed PID file %s: %s", display, exc)
        return
    if pid == os.getpid():
        logger.debug("taking over PID file %s naming this process", display)
        return
    check = check_writer(pid, st.st_mtime_ns)
    if check.stale:
        logger.debug("taking over stale PID file %s: %s", display, check.reason)
        return
    why = (
        "started before the file was written"
        if check.reason is None
        else f"its identity is unknown: {check.reason}"
    )
    raise AlreadyRunning(
        display,
        f"is not locked, but process {pid} is running and {why}; it may be "
        "an instance that does not lock the file. Stop it, or remove the "
        "file if it is not this service",
        pid=pid,
    )


def _replace_contents(fd: int, pid: int) -> None:
    """Truncate the locked file at `fd` and write ``"<pid>\\n"`` in one write.

    Truncating first means a reader sees either an empty file, which a
    locked file's readers take for a holder still starting, or the whole
    new PID, never a mix of the old and new digits. Raises OSError.
    """
    data = b"%d\n" % pid
    os.ftruncate(fd, 0)
    _step("truncated")
    written = os.pwrite(fd, data, 0)
    if written != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _write_pid(fd: int, st: os.stat_result, target: _Target, created: bool) -> int:
    """Truncate the locked file and write our PID in one write.

    On failure, removes the file if this call created it and the name still
    refers to it, then raises PidfileError with the reason. A file that was
    already there stays, possibly empty, which the next start takes over.
    The caller still owns `fd` and closes it, which releases the lock.
    """
    pid = os.getpid()
    try:
        _replace_contents(fd, pid)
    except OSError as exc:
        if created:
            _remove_created(target, st)
        raise PidfileError(
            target.display, f"cannot write the PID: {exc.strerror}", exc.errno
        ) from None
    _step("written")
    return pid


def _unlink_if_same(target: _Target, st: os.stat_result) -> None:
    """Remove the name if it still refers to the inode `st` describes."""
    if not _same_file(target, st):
        logger.warning(
            "PID file %s was replaced by another file; leaving that file",
            target.display,
        )
        return
    try:
        os.unlink(target.name, dir_fd=target.directory.fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PidfileError(
            target.display, f"cannot remove it: {exc.strerror}", exc.errno
        ) from None
    logger.debug("removed PID file %s (inode %d)", target.display, st.st_ino)


def _remove_created(target: _Target, st: os.stat_result) -> None:
    try:
        _unlink_if_same(target, st)
    except PidfileError as exc:
        # The write error is the one to report; an empty file left behind
        # is taken over by the next start.
        logger.warning(
            "cannot remove the PID file %s it created: %s", target.display, exc
        )


class _Held(NamedTuple):
    """State of a held PID file: where it is, its lock fd, inode and PIDs."""

    target: _Target
    fd: int  # holds the lock
    st: os.stat_result  # identifies the held inode
    owner: int  # the acquiring process, the only one that may remove the file
    pid: int  # the PID in the file: the owner's, unless replaced since


def _acquire_at(target: _Target, mode: int) -> _Held:
    backoff = _Backoff(CONTENTION_WAIT)
    for _ in range(MAX_ATTEMPTS):
        fd, created = _open_pidfile(target, mode)
        try:
            held = _lock_opened(fd, created, target, backoff)
        except BaseException:
            os.close(fd)
            raise
        if held is not None:
            return held
        os.close(fd)
    raise _churn_error(target.display)


def _lock_opened(
    fd: int, created: bool, target: _Target, backoff: _Backoff
) -> _Held | None:
    """Lock the opened file and write our PID; None means start over."""
    if not _check_opened(fd, target):
        return None
    _step("opened")
    if not _try_lock(fd):
        error = _holder_error(fd, target.display, backoff)
        if error is not None:
            raise error
        return None
    _step("locked")

    # Between our open and our lock, the previous holder may have removed
    # the file or a cleaner may have replaced it: a lock on an inode that
    # the name no longer refers to protects nothing.
    st = os.fstat(fd)
    if not _same_file(target, st):
        return None

    _check_unlocked(fd, st, target.display)
    pid = _write_pid(fd, st, target, created)
    return _Held(target, fd, st, pid, pid)


# Every PidFile that holds a file in this process. It is a strong registry
# on purpose: a PidFile that nobody references any more keeps its lock until
# the process exits, and the fork and exit handlers must still find it.
_HOLDERS: set[PidFile] = set()


def _close_after_fork() -> None:
    """Close every inherited hold in a new child, without removing files.

    A child must not keep the parent's lock alive after the parent dies,
    and must never remove the parent's file.
    """
    # NOTE: a PidFile that another thread was acquiring during the fork is
    # not registered yet, so the child keeps that one descriptor open.
    for holder in list(_HOLDERS):
        holder._forget()
    _HOLDERS.clear()


def _release_at_exit() -> None:
    for holder in list(_HOLDERS):
        with contextlib.suppress(OSError):
            # Interpreter exit has no caller left to report to; the file
            # is stale once this process is gone and the next start takes
            # it over.
            holder.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_after_fork)
atexit.register(_release_at_exit)


class PidFile(contextlib.ContextDecorator):
    """A PID file held by this process for as long as it runs a service.

    ``with PidFile("/run/app.pid"):`` creates the file if needed, takes an
    exclusive ``flock`` on it, writes ``"<pid>\\n"``, and on exit removes
    the file and releases the lock. It also works as a decorator and as
    python-daemon's ``DaemonContext(pidfile=...)``.

    Only the process that acquired the file removes it. A child created by
    ``fork`` closes its inherited copy of the lock at once, so it neither
    keeps a dead parent's lock alive nor removes the parent's file. A held
    file that is never released is removed at interpreter exit. The object
    is not thread-safe: acquire and release it from one thread.

    `mode` sets the permission bits of a new file and may not let group or
    others write it. `trusted_uids` sets the users trusted to own the
    directories on the path (default: root and the effective uid).
    """

    def __init__(
        self,
        path: PathArg,
        *,
        mode: int = 0o644,
        trusted_uids: Iterable[int] | None = None,
    ) -> None:
        if mode & _FORBIDDEN_MODE_BITS:
            raise ValueError(
                f"mode {mode:#o} has bits outside 0o755; a PID file must "
                "not be writable by group or others"
            )
        text = os.fspath(path)
        if not isinstance(text, str):
            raise TypeError(
                f"PID file path must be str or os.PathLike[str], "
                f"not {type(text).__name__}"
            )
        self._path = text
        self._mode = mode
        self._trusted = as_trusted(trusted_uids)
        self._held: _Held | None = None

    @property
    def path(self) -> str:
        """The PID file's path as given."""
        return self._path

    @property
    def pid(self) -> int | None:
        """The PID in the file while this process holds it, else None.

        It is this process's PID unless ``pidsafe run`` replaced it with the
        PID of the command it supervises.
        """
        held = self._held
        return None if held is None else held.pid

    def fileno(self) -> int:
        """Return the fd that holds the lock; raise ValueError if not held."""
        if self._held is None:
            raise ValueError(f"PID file {self.path} is not held")
        return self._held.fd

    def acquire(self) -> None:
        """Create or take over the PID file, lock it and write our PID.

        Resolves the directory securely and rejects an untrusted location,
        a symlink, a special file, a file owned by another user and a file
        that others may write, with `InsecurePidfile`, `PidfileSymlink`,
        `PidfileNotRegular` or `PidfilePermissionError`. A file that another
        process has locked raises `AlreadyRunning` with the holder's `pid`
        (None when it is unknown) and is left exactly as it was.

        An unlocked file is taken over when it is empty or malformed, when
        it names this process or a dead one, when its process started after
        the file was written, or when the file predates the last boot. An
        unlocked file naming a live process that may have written it raises
        `AlreadyRunning` and is left as it was.

        When writing the PID fails, the file is removed if this call created
        it, and `PidfileError` names the reason. Raises RuntimeError if this
        object already holds the file.
        """
        if self._held is not None:
            raise RuntimeError(f"PID file {self.path} is already held by this object")
        directory, name, display = open_parent(self._path, self._trusted)
        try:
            if directory.reason is not None:
                raise InsecurePidfile(
                    display, f"refusing to hold it: {directory.reason}"
                )
            target = _Target(directory, name, display, self._trusted)
            self._held = _acquire_at(target, self._mode)
        except BaseException:
            os.close(directory.fd)
            raise
        _HOLDERS.add(self)
        logger.debug("acquired PID file %s as PID %d", display, self._held.pid)

    def _replace_pid(self, pid: int) -> None:
        """Write `pid` into the held file in place of the current PID.

        A supervisor calls it so that its file names the child it runs
        rather than itself. The lock is held throughout, and the file keeps its inode,
        so a second starter still fails and a reader never sees the file
        missing. Readers may see it empty for an instant, which they report
        as a holder still starting. Only the acquiring process still removes
        the file on release.

        Raises ValueError if the file is not held by this process, and
        PidfileError if the write fails, which leaves the file held and
        possibly empty.
        """
        held = self._held
        if held is None or held.owner != os.getpid():
            raise ValueError(f"PID file {self.path} is not held by this process")
        validate_pid(pid)
        try:
            _replace_contents(held.fd, pid)
        except OSError as exc:
            raise PidfileError(
                held.target.display,
                f"cannot write PID {pid}: {exc.strerror}",
                exc.errno,
            ) from None
        self._held = held._replace(pid=pid)
        logger.debug("PID file %s now names PID %d", held.target.display, pid)

    def release(self) -> None:
        """Remove the file and release the lock; do nothing if not held.

        The file is removed only by the process that acquired it, while the
        lock is still held, and only if its name still refers to the locked
        inode. Raises PidfileError if the removal fails; the lock is
        released either way.
        """
        held = self._held
        if held is None:
            return
        self._held = None
        _HOLDERS.discard(self)
        try:
            if held.owner == os.getpid():
                _unlink_if_same(held.target, held.st)
        finally:
            os.close(held.fd)
            os.close(held.target.directory.fd)

    def _forget(self) -> None:
        """Close the held fds without removing the file (after a fork)."""
        held = self._held
        if held is None:
            return
        self._held = None
        for fd in (held.fd, held.target.directory.fd):
            with contextlib.suppress(OSError):
                # Code that ran before this handler may have closed them.
                os.close(fd)

    def __enter__(self) -> PidFile:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        held = self._held
        if held is None:
            state = "not held"
        elif held.pid == held.owner:
            state = f"held by PID {held.owner}"
        else:
            state = f"held by PID {held.owner}, naming PID {held.pid}"
        return f"PidFile({self.path!r}, {state})"
