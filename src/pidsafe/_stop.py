"""Stopping and signalling the process that a PID file names.

Design note. A PID read from a file is a claim, and ``kill(pid, sig)``
acts on whatever process has that number when the call runs. Between
the read and the signal, the named process can exit and its PID can go
to an unrelated process. So pidsafe first corroborates the claim: the
recorded process holds the file's lock, or it started before the file
was last written and after the last boot. Then it pins the process. On
Linux it opens a pidfd for the PID and reads the process's identity from
``/proc``. Then it confirms through the pidfd that the process has not
been reaped, so ``/proc`` described this process and not a successor with
the same number. Every signal then goes through the pidfd, which
keeps referring to the pinned process: once that process is reaped, a
signal fails with ESRCH instead of reaching the PID's next owner.
Waiting for the exit polls the pidfd, which becomes readable when the
process exits.

Rejected alternatives: ``kill`` after a check leaves the race described
above open, so it is only the fallback where pidfds are missing.
Sleeping between existence checks, as start-stop-daemon does, notices an
exit up to one poll interval late.

What can still fail: without pidfds (Linux before 5.3, macOS, the BSDs)
the process can exit and its PID be reused between the last check and
the ``kill``; see the NOTE in `_KillHandle.send`. The start-time rule
compares wall-clock times, so a large backward clock step after the file
was written can hide a reused PID.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Union

from ._errors import (
    IdentityMismatch,
    InsecurePidfile,
    InvalidPidfile,
    NotRunning,
    PidfileError,
    PidfileMissing,
    PidfilePermissionError,
)
from ._lock import flock_held, flock_holders
from ._parse import EMPTY_REASON
from ._path import Directory, PathArg, as_trusted, open_parent
from ._process import (
    COMM_MAX,
    ProcessInfo,
    executable_id,
    inspect_process,
    is_alive,
    judge_start,
    read_proc_status,
)
from ._read import PidfileRecord, logger, open_leaf, read_at
from ._schedule import (
    Forever,
    SendSignal,
    Step,
    parse_schedule,
    parse_signal,
)
from ._status import clean_at

#: The schedule `stop` follows by default: SIGTERM, up to 30 s for the
#: exit, then SIGKILL and up to 5 s more.
DEFAULT_SCHEDULE: Final = "TERM/30/KILL/5"


def _probe_pidfd() -> bool:
    if not (hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        # ENOSYS before Linux 5.3; EPERM where a seccomp filter blocks it.
        return False
    os.close(fd)
    return True


#: True where `stop` and `signal_pidfile` pin the process with a pidfd
#: (Linux 5.3 and later), so that a check and the signal after it always
#: address the same process. Where it is False, they fall back to ``kill``,
#: and a PID reused between the last check and the signal receives it.
USES_PIDFD: Final[bool] = _probe_pidfd()

#: Seconds between `stop`'s progress callbacks while it waits for an exit.
PROGRESS_INTERVAL: Final = 0.1

# Without a pidfd to poll, the fallback checks for the exit with growing
# sleeps between these bounds, in seconds.
#: How long stop waits, after the process exits, for another process that
#: still holds the file's lock (a supervisor such as ``pidsafe run``) to
#: remove the file itself, before reporting it as kept.
HOLDER_RELEASE_SECONDS: Final = 1.0

_FIRST_SLEEP: Final = 0.001
_MAX_SLEEP: Final = 0.05

#: Test seam: when set, `stop` and `signal_pidfile` call it at three
#: points. "read": the file was read and no process opened yet. "opened":
#: a pidfd is open and the identity not yet checked. "signal": checked,
#: just before a signal is sent.
step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    hook = step_hook
    if hook is not None:
        hook(name)


Outcome = Literal["stopped", "not_running", "still_running", "failed"]

#: start-stop-daemon's exit status for each outcome of `stop`.
STOP_EXIT_CODES: Final[dict[str, int]] = {
    "stopped": 0,
    "not_running": 1,
    "still_running": 2,
    "failed": 3,
}


@dataclass(frozen=True)
class SentSignal:
    """A signal that `stop` sent, and when."""

    signal: signal.Signals
    time: float  # wall-clock seconds since the epoch, just after sending


@dataclass(frozen=True)
class StopProgress:
    """Progress of one wait of `stop`, passed to its progress callback."""

    pid: int
    signal: signal.Signals | None  # the last signal sent
    timeout: float  # seconds this wait step allows
    remaining: float  # seconds left of this wait step


@dataclass(frozen=True)
class StopResult:
    """What `stop` did to the process a PID file names.

    `outcome` is "stopped" (the process exited after a signal from this
    call), "not_running" (no file, an empty unlocked file, or a process
    that had exited before any signal was sent), "still_running" (the
    schedule ended with the process alive) or "failed" (after a signal
    was sent, a later identity check or signal failed; `reason` names
    which). `removed` tells whether this call removed the PID file,
    `removed_by_holder` whether the process holding its lock (a supervisor
    such as ``pidsafe run``) removed it after the exit instead, and
    `kept_reason` why a file that is still there was kept.
    """

    outcome: Outcome
    path: str
    pid: int | None
    signals: tuple[SentSignal, ...]
    removed: bool
    reason: str | None
    kept_reason: str | None = None
    removed_by_holder: bool = False

    @property
    def exit_code(self) -> int:
        """Exit status as start-stop-daemon's: 0, 1, 2 or 3 (see the outcomes)."""
        return STOP_EXIT_CODES[self.outcome]


# What the caller asked pidsafe to check, and where the file is.


@dataclass(frozen=True)
class _Checks:
    exe: tuple[int, int] | None  # (st_dev, st_ino) of the expected executable
    exe_path: str | None
    name: bytes | None  # expected command name, cut to COMM_MAX bytes
    uid: int | None
    allow_pid1: bool
    allow_self: bool


def _make_checks(
    expect_exe: PathArg | None,
    expect_name: str | None,
    expect_uid: int | None,
    allow_pid1: bool,
    allow_self: bool,
) -> _Checks:
    exe = exe_path = None
    if expect_exe is not None:
        exe_path = os.fspath(expect_exe)
        # Follows symlinks, as start-stop-daemon's --exec does, so that
        # /usr/sbin/foo -> /usr/lib/foo/foo matches the file that runs.
        st = os.stat(exe_path)
        exe = (st.st_dev, st.st_ino)
    name = None
    if expect_name is not None:
        if not expect_name:
            raise ValueError("expect_name is empty")
        name = os.fsencode(expect_name)[:COMM_MAX]
    if expect_uid is not None and expect_uid < 0:
        raise ValueError(f"expect_uid {expect_uid} is negative")
    return _Checks(exe, exe_path, name, expect_uid, allow_pid1, allow_self)


class _Location(NamedTuple):
    directory: Directory  # the caller of stop owns directory.fd
    name: str
    shown: str  # the path as given, for messages
    trusted: frozenset[int]


# Handles on a process: how signals are sent and exits are noticed.


class _PidfdHandle:
    """A process pinned by a pidfd, which this object owns."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def pin(self, info: ProcessInfo) -> None:
        """Remember the checked identity (the pidfd already pins it)."""

    def unreaped(self) -> bool:
        """Return whether the process is not yet reaped, so its PID is its own."""
        try:
            signal.pidfd_send_signal(self.pidfd, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            # The kernel looks the process up before it checks permission,
            # so EPERM means the process exists.
            return True
        return True

    def send(self, sig: int) -> bool:
        """Send `sig`; return False when the process is already reaped."""
        try:
            signal.pidfd_send_signal(self.pidfd, sig)
        except ProcessLookupError:
            return False
        return True

    def exited(self) -> bool:
        """Return whether the process has exited (a zombie has)."""
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def wait(self, seconds: float, tick: Callable[[float], None] | None) -> bool:
        """Wait up to `seconds` for the exit; return whether it happened.

        Calls `tick` with the seconds left about every PROGRESS_INTERVAL.
        """
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bool(poller.poll(0))
            if tick is not None:
                tick(remaining)
                remaining = min(remaining, PROGRESS_INTERVAL)
            # poll takes whole milliseconds; rounding up avoids a busy loop
            # of zero-length polls just before the deadline.
            if poller.poll(math.ceil(remaining * 1000)):
                return True

    def close(self) -> None:
        if self.pidfd >= 0:
            fd, self.pidfd = self.pidfd, -1
            os.close(fd)


def _kill(pid: int, sig: int) -> bool:
    """Send `sig` to the one process `pid`; return False if it is gone.

    Raises ValueError for a PID below 1, because ``kill`` reads 0 as the
    caller's process group and a negative number as a group or as every
    process.
    """
    if pid < 1:
        raise ValueError(f"refusing to call kill with PID {pid}")
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class _KillHandle:
    """A process known only by its PID, for platforms without pidfds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.token: float | None = None

    def pin(self, info: ProcessInfo) -> None:
        """Remember the start token, to notice when the PID is reused."""
        self.token = info.start_token

    def unreaped(self) -> bool:
        """Return whether the PID exists (possibly as another process)."""
        try:
            return _kill(self.pid, 0)
        except PermissionError:
            return True

    def send(self, sig: int) -> bool:
        # NOTE: the process can exit and its PID go to another process
        # between the last identity check and this kill, and that process
        # then receives the signal. Only a pidfd closes this gap.
        return _kill(self.pid, sig)

    def exited(self) -> bool:
        if not is_alive(self.pid):
            return True
        if self.token is None:
            return False
        try:
            info = inspect_process(self.pid)
        except ProcessLookupError:
            return True
        return info.start_token != self.token

    def wait(self, seconds: float, tick: Callable[[float], None] | None) -> bool:
        deadline = time.monotonic() + seconds
        delay = _FIRST_SLEEP
        while not self.exited():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if tick is not None:
                tick(remaining)
            time.sleep(min(delay, remaining, PROGRESS_INTERVAL))
            delay = min(delay * 2, _MAX_SLEEP)
        return True

    def close(self) -> None:
        pass


_Handle = Union[_PidfdHandle, _KillHandle]


def _thread_refusal(shown: str, pid: int, tgid: int) -> IdentityMismatch:
    return IdentityMismatch(
        shown,
        f"refusing to signal {pid}: it is a thread of process {tgid}, not a "
        "process, and a signal to it would reach the whole process",
    )


def _open_handle(pid: int, shown: str) -> _Handle | None:
    """Open a handle on `pid`; return None when no such process exists."""
    if not USES_PIDFD:
        return _KillHandle(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            # pidfd_open accepts only a thread-group leader, so a thread ID
            # fails here: with EINVAL before Linux 6.9, ENOENT since.
            status = read_proc_status(pid)
            if status is None:
                return None
            if status.tgid != pid:
                raise _thread_refusal(shown, pid, status.tgid) from None
        raise PidfileError(
            shown,
            f"cannot open a pidfd for process {pid}: {exc.strerror}",
            exc.errno,
        ) from None
    return _PidfdHandle(pid, pidfd)


# Identity checks.


class _Seen(NamedTuple):
    """A process's identity, read while its PID was known to be its own."""

    info: ProcessInfo
    exe: tuple[int, int] | None  # read only when the caller expects one


def _inspect(handle: _Handle, checks: _Checks, shown: str) -> _Seen | None:
    """Read the identity of the handle's process; None when it is gone.

    The reads happen first and the handle confirms afterwards that the
    process was not reaped, so the data cannot come from a successor with
    the same PID. That holds with a pidfd only; see `_KillHandle.send`.
    """
    pid = handle.pid
    try:
        info = inspect_process(pid)
        exe = executable_id(pid) if checks.exe is not None else None
    except ProcessLookupError:
        if not handle.unreaped():
            return None
        raise IdentityMismatch(
            shown,
            f"refusing to signal process {pid}: its /proc entry is hidden "
            "(the hidepid mount option), so its identity cannot be checked",
        ) from None
    except PermissionError:
        raise IdentityMismatch(
            shown,
            f"refusing to signal process {pid}: permission denied reading "
            "its executable to compare it with the expected one",
        ) from None
    if not handle.unreaped():
        return None
    return _Seen(info, exe)


def _check_pid(pid: int, checks: _Checks, shown: str) -> None:
    """Raise for PID 1 and this process unless the caller allowed them."""
    if pid == 1 and not checks.allow_pid1:
        raise IdentityMismatch(
            shown,
            "refusing to signal process 1, the init process; allow it "
            "explicitly with allow_pid1 (--allow-pid1)",
        )
    if pid == os.getpid() and not checks.allow_self:
        raise IdentityMismatch(
            shown,
            f"refusing to signal process {pid}: it is the calling process "
            "itself; allow it explicitly with allow_self (--allow-self)",
        )
    # A file holding `$$` names the shell that runs `pidsafe stop`, which
    # would then kill the user's own session.
    if pid == os.getppid() and not checks.allow_self:
        raise IdentityMismatch(
            shown,
            f"refusing to signal process {pid}: it is the parent of the "
            "calling process (such as the shell that ran pidsafe); allow it "
            "explicitly with allow_self (--allow-self)",
        )


def _corroboration_gap(record: PidfileRecord, info: ProcessInfo) -> str | None:
    """Return why nothing shows that the process wrote the file, or None."""
    pid = record.pid
    holders = flock_holders(record.dev, record.ino)
    if holders and pid in holders:
        return None
    # A lock held by some other process proves nothing about this PID:
    # anyone who can open the file for reading can take its flock.
    lock_note = (
        f"; the file's lock is held by process {min(holders)}, not by it"
        if holders
        else ""
    )
    if info.start is None:
        return (
            "its start time is unknown and it does not hold the file's "
            f"lock, so nothing shows that it wrote the file{lock_note}"
        )
    check = judge_start(pid, record.mtime_ns, info.start)
    if check.state == "writer":
        return None
    if check.state == "recycled":
        return (
            "it started after the file was last written, so it cannot have "
            f"written it and the PID was reused{lock_note}"
        )
    return f"{check.reason}, so it cannot have written it{lock_note}"


def _trust_gap(record: PidfileRecord, info: ProcessInfo) -> str | None:
    """Return why an untrusted file may not name this process, or None.

    A user who could write an untrusted file may name only processes that
    the file's owner could signal anyway: that owner's own, and none at
    all for a file owned by root.
    """
    if record.trusted:
        return None
    untrusted = f"the file is untrusted ({record.reason})"
    if record.uid == 0:
        return f"{untrusted} and owned by root, so it may not name any process"
    if info.ruid is None:
        return f"{untrusted} and the process's owner is unknown"
    if info.ruid != record.uid:
        return (
            f"{untrusted}, and the process belongs to uid {info.ruid}, not "
            f"to the file's owner uid {record.uid}"
        )
    return None


def _matcher_gap(seen: _Seen, checks: _Checks) -> str | None:
    """Return why the process fails an expect_* matcher, or None."""
    info = seen.info
    if checks.uid is not None and info.ruid != checks.uid:
        return f"it runs as uid {info.ruid}, not as the expected uid {checks.uid}"
    if checks.name is not None and info.name != checks.name:
        actual = "unknown" if info.name is None else repr(os.fsdecode(info.name))
        return f"it is named {actual}, not {os.fsdecode(checks.name)!r}"
    if checks.exe is not None and seen.exe != checks.exe:
        return f"it does not run {checks.exe_path}"
    return None


def _first_refusal(
    record: PidfileRecord, seen: _Seen, checks: _Checks, shown: str
) -> PidfileError | None:
    """Return the error that forbids any signal, or None if it is allowed."""
    pid = record.pid
    gap = _corroboration_gap(record, seen.info)
    if gap is not None:
        return IdentityMismatch(shown, f"refusing to signal process {pid}: {gap}")
    gap = _trust_gap(record, seen.info)
    if gap is not None:
        return InsecurePidfile(shown, f"refusing to signal process {pid}: {gap}")
    gap = _matcher_gap(seen, checks)
    if gap is not None:
        return IdentityMismatch(shown, f"refusing to signal process {pid}: {gap}")
    return None


def _kind_refusal(info: ProcessInfo, shown: str) -> PidfileError | None:
    """Return the error for a thread or kernel thread, or None."""
    if info.tgid is not None and info.tgid != info.pid:
        return _thread_refusal(shown, info.pid, info.tgid)
    if info.kernel_thread:
        return IdentityMismatch(
            shown, f"refusing to signal process {info.pid}: it is a kernel thread"
        )
    return None


# Finding and pinning the process.


class _NoProcess(NamedTuple):
    """No process to signal, with the reason and the file to clean."""

    pid: int | None
    reason: str
    file_id: tuple[int, int] | None  # (st_dev, st_ino) of the file read
    missing: bool = False  # there is no PID file


class _Pinned(NamedTuple):
    """A corroborated process, pinned by `handle`, with its file's record."""

    record: PidfileRecord
    handle: _Handle
    seen: _Seen


def _file_id(record: PidfileRecord) -> tuple[int, int]:
    return record.dev, record.ino


def _find(location: _Location, checks: _Checks) -> _Pinned | _NoProcess:
    """Read the file and pin its process, or return why there is none.

    Raises a `PidfileError` subclass for every refusal, before any signal.
    The caller owns the returned handle.
    """
    try:
        record = read_at(
            location.directory,
            location.name,
            location.shown,
            location.trusted,
            strict=False,
        )
    except PidfileMissing:
        return _NoProcess(None, "no PID file", None, missing=True)
    except InvalidPidfile as exc:
        if exc.reason != EMPTY_REASON:
            raise
        return _empty_file(location)
    _step("read")

    pid = record.pid
    _check_pid(pid, checks, location.shown)
    handle = _open_handle(pid, location.shown)
    if handle is None:
        return _NoProcess(pid, f"process {pid} is not running", _file_id(record))
    try:
        _step("opened")
        pinned = _pin(record, handle, checks, location.shown)
    except BaseException:
        handle.close()
        raise
    if isinstance(pinned, _NoProcess):
        handle.close()
    return pinned


def _pin(
    record: PidfileRecord, handle: _Handle, checks: _Checks, shown: str
) -> _Pinned | _NoProcess:
    pid = record.pid
    seen = _inspect(handle, checks, shown)
    if seen is None:
        return _NoProcess(pid, f"process {pid} is not running", _file_id(record))
    refusal = _kind_refusal(seen.info, shown)
    if refusal is not None:
        raise refusal
    if seen.info.state == "Z":
        reason = f"process {pid} has exited and waits to be reaped"
        return _NoProcess(pid, reason, _file_id(record))
    refusal = _first_refusal(record, seen, checks, shown)
    if refusal is not None:
        logger.debug("not signalling: %s", refusal)
        raise refusal
    handle.pin(seen.info)
    return _Pinned(record, handle, seen)


def _empty_file(location: _Location) -> _NoProcess:
    shown = location.shown
    try:
        fd, st = open_leaf(location.directory, location.name, shown)
    except PidfileMissing:
        return _NoProcess(None, "no PID file", None, missing=True)
    os.close(fd)
    held = flock_held(st)
    if held:
        raise PidfileError(
            shown,
            "is locked but holds no PID yet, so its service is still "
            "starting; try again once it has written its PID",
            errno.EAGAIN,
        )
    if held is None:
        raise PidfileError(
            shown,
            "is empty, and /proc/locks is unreadable to tell if it is locked",
            errno.EAGAIN,
        )
    return _NoProcess(
        None, "the PID file is empty and not locked", (st.st_dev, st.st_ino)
    )


class _Removal(NamedTuple):
    removed: bool  # this call removed the file
    kept_reason: str | None  # why a file that is still there was kept
    by_holder: bool = False  # the lock's holder removed it after the exit


def _remove_if_ours(location: _Location, file_id: tuple[int, int] | None) -> _Removal:
    """Remove the file judged earlier if it is stale and ours to remove.

    Returns whether it was removed and, if it is still there, why it was
    kept. The clean takes the file's lock, so it never removes a file that
    a holder (such as a restarted service) has locked meanwhile.
    """
    if file_id is None:
        return _Removal(False, None)
    if _wait_for_holder(location, file_id):
        return _Removal(False, None, by_holder=True)
    try:
        found = clean_at(
            location.directory,
            location.name,
            location.shown,
            location.trusted,
            file_id,
        )
    except PidfileError as exc:
        return _Removal(False, exc.reason)
    if found.state == "stale":
        return _Removal(True, None)
    if found.state == "absent":
        return _Removal(False, None)
    return _Removal(False, f"{found.state}: {found.reason}")


def _wait_for_holder(location: _Location, file_id: tuple[int, int]) -> bool:
    """Wait, bounded, while another process holds the file; True if gone.

    A supervisor holds the file for the child it names and removes it once
    the child exits. The wait reads /proc/locks and never takes the lock,
    so it cannot make that supervisor's own removal fail.
    """
    deadline = time.monotonic() + HOLDER_RELEASE_SECONDS
    while True:
        try:
            st = os.stat(
                location.name, dir_fd=location.directory.fd, follow_symlinks=False
            )
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if (st.st_dev, st.st_ino) != file_id or not flock_held(st):
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


# Following the schedule.


class _Run:
    """One `stop` call's schedule run against a pinned process."""

    def __init__(
        self,
        pinned: _Pinned,
        checks: _Checks,
        shown: str,
        progress: Callable[[StopProgress], None] | None,
    ) -> None:
        self.pinned = pinned
        self.checks = checks
        self.shown = shown
        self.progress = progress
        self.sent: list[SentSignal] = []
        # True while nothing has happened since the check that pinned the
        # process, so the first signal needs no second check.
        self.just_pinned = True

    @property
    def pid(self) -> int:
        return self.pinned.record.pid

    def exited(self) -> tuple[Outcome, str]:
        if not self.sent:
            return "not_running", f"process {self.pid} exited before any signal"
        last = self.sent[-1].signal.name
        return "stopped", f"process {self.pid} exited after {last}"

    def refuse(self, error: PidfileError, gap: str) -> tuple[Outcome, str]:
        """Raise `error` if nothing was sent yet, else end the run as failed."""
        if not self.sent:
            raise error
        return "failed", f"stopped sending signals to process {self.pid}: {gap}"

    def recheck(self) -> tuple[Outcome, str] | None:
        """Check the process again before a signal.

        Returns the outcome that ends the schedule: the process exited, or
        it no longer passes a check (it ran ``exec`` or changed its uid).
        A failed check before the first signal raises instead, as the
        first check does.
        """
        handle = self.pinned.handle
        try:
            seen = _inspect(handle, self.checks, self.shown)
        except PidfileError as exc:
            return self.refuse(exc, exc.reason)
        if seen is None or seen.info.state == "Z":
            return self.exited()
        # Only the kill fallback can see another process here. With a
        # pidfd, _inspect confirmed that the pinned process was not reaped
        # after the reads, so they describe that process.
        if seen.info.start_token != self.pinned.seen.info.start_token:
            return self.exited()
        refusing = f"refusing to signal process {self.pid}"
        gap = _trust_gap(self.pinned.record, seen.info)
        if gap is not None:
            return self.refuse(InsecurePidfile(self.shown, f"{refusing}: {gap}"), gap)
        gap = _matcher_gap(seen, self.checks)
        if gap is not None:
            return self.refuse(IdentityMismatch(self.shown, f"{refusing}: {gap}"), gap)
        return None

    def send(self, sig: signal.Signals) -> tuple[Outcome, str] | None:
        """Send `sig` after the identity check; return an ending outcome."""
        if not self.just_pinned:
            ended = self.recheck()
            if ended is not None:
                return ended
        self.just_pinned = False
        _step("signal")
        try:
            delivered = self.pinned.handle.send(sig)
        except PermissionError:
            reason = f"permission denied sending {sig.name} to process {self.pid}"
            if not self.sent:
                raise PidfilePermissionError(self.shown, reason) from None
            return "failed", reason
        if not delivered:
            return self.exited()
        self.sent.append(SentSignal(sig, time.time()))
        logger.debug("sent %s to process %d for %s", sig.name, self.pid, self.shown)
        return None

    def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for the exit, reporting progress."""
        self.just_pinned = False
        progress = self.progress
        if progress is None:
            return self.pinned.handle.wait(seconds, None)
        last = self.sent[-1].signal if self.sent else None

        def tick(remaining: float) -> None:
            progress(StopProgress(self.pid, last, seconds, remaining))

        return self.pinned.handle.wait(seconds, tick)


def _follow(run: _Run, steps: tuple[Step, ...]) -> tuple[Outcome, str]:
    index = 0
    repeat_from: int | None = None
    while index < len(steps):
        step = steps[index]
        index += 1
        if isinstance(step, Forever):
            repeat_from = index
        elif isinstance(step, SendSignal):
            ended = run.send(step.signal)
            if ended is not None:
                return ended
        elif run.wait(step.seconds):
            return run.exited()
        if index == len(steps) and repeat_from is not None:
            index = repeat_from
    if run.pinned.handle.exited():
        return run.exited()
    return (
        "still_running",
        f"process {run.pid} is still running at the end of the schedule",
    )


def _stop_steps(
    schedule: str, stop_signal: signal.Signals | int | str | None
) -> tuple[Step, ...]:
    """Parse `schedule`, raising ValueError that names the bad argument."""
    chosen = signal.SIGTERM
    if stop_signal is not None:
        text = stop_signal if isinstance(stop_signal, str) else f"-{int(stop_signal)}"
        try:
            chosen = parse_signal(text)
        except ValueError as exc:
            raise ValueError(f"invalid stop signal {stop_signal!r}: {exc}") from None
        if schedule == DEFAULT_SCHEDULE:
            schedule = f"{chosen.name}/30/KILL/5"
        elif "/" in schedule:
            raise ValueError(
                f"a stop signal applies only to a schedule that is one "
                f"timeout, and {schedule!r} names its own signals; put "
                f"{chosen.name} in the schedule instead"
            )
    try:
        return parse_schedule(schedule, chosen)
    except ValueError as exc:
        raise ValueError(f"invalid schedule {schedule!r}: {exc}") from None


def signal_number(sig: signal.Signals | int | str) -> int:
    """Return `sig` (a signal, a number, a name or "0") as a number.

    Raises ValueError for an unknown name or a number outside 0..NSIG-1.
    """
    if isinstance(sig, str):
        # Signal 0 sends nothing, which parse_signal rejects for schedules.
        if sig.lstrip("-") == "0":
            return 0
        return int(parse_signal(sig))
    number = int(sig)
    if not 0 <= number < signal.NSIG:
        raise ValueError(f"signal {number} is outside 0..{signal.NSIG - 1}")
    return number


def _open_location(path: PathArg, trusted: frozenset[int]) -> _Location:
    directory, name, shown = open_parent(path, trusted)
    return _Location(directory, name, shown, trusted)


def stop(
    path: PathArg,
    *,
    schedule: str = DEFAULT_SCHEDULE,
    signal: signal.Signals | int | str | None = None,
    expect_exe: PathArg | None = None,
    expect_name: str | None = None,
    expect_uid: int | None = None,
    allow_pid1: bool = False,
    allow_self: bool = False,
    trusted_uids: Iterable[int] | None = None,
    progress: Callable[[StopProgress], None] | None = None,
) -> StopResult:
    """Stop the process named by the PID file at `path`, following `schedule`.

    `schedule` uses start-stop-daemon's ``--retry`` grammar
    (``TERM/30/KILL/5``; see `parse_schedule`). `signal` is the stop
    signal: a schedule of one timeout N means ``SIGNAL/N/KILL/N``, and the
    default schedule becomes ``SIGNAL/30/KILL/5``. A schedule that names
    its own signals and a `signal` together raise ValueError.

    Before any signal, the process must be corroborated as the file's
    writer: it holds the file's lock itself, or it started before the file
    was last written and after the last boot. An untrusted file may name
    only a process whose real uid is the file owner's, and never for a
    file owned by root. PID 1 needs `allow_pid1`, and the calling process
    and its parent (such as the shell that ran the command) need
    `allow_self`. Threads and kernel threads are never signalled.
    `expect_exe` (same device and inode as the running executable),
    `expect_name` (the kernel's command name, compared on its first 15
    bytes) and `expect_uid` (real uid) narrow the match further. The
    identity is checked again before every signal that follows a wait or
    another signal. Once a signal was sent, a failed check ends the
    schedule with the outcome "failed" instead of raising.

    With `USES_PIDFD`, every signal goes through a pidfd opened before the
    final check, and exits are noticed by polling it. `progress`, if given,
    is called about every `PROGRESS_INTERVAL` seconds while waiting.

    When the process is gone, the file is removed if it is stale, trusted
    and not locked, and still the file that was read.

    Raises `IdentityMismatch` or `InsecurePidfile` when a check forbids
    the first signal. The message names the path, the PID and the reason,
    and nothing was sent. Raises the errors of `read_pidfile` for a file
    that cannot be read, and `PidfileError` for a locked file that holds
    no PID yet. Raises ValueError for an invalid schedule or signal, and
    OSError when `expect_exe` cannot be examined.
    """
    steps = _stop_steps(schedule, signal)
    checks = _make_checks(expect_exe, expect_name, expect_uid, allow_pid1, allow_self)
    trusted = as_trusted(trusted_uids)
    try:
        location = _open_location(path, trusted)
    except PidfileMissing as exc:
        return StopResult("not_running", exc.path, None, (), False, "no PID file")
    try:
        return _stop_at(location, steps, checks, progress)
    finally:
        os.close(location.directory.fd)


def _stop_at(
    location: _Location,
    steps: tuple[Step, ...],
    checks: _Checks,
    progress: Callable[[StopProgress], None] | None,
) -> StopResult:
    found = _find(location, checks)
    if isinstance(found, _NoProcess):
        removal = _remove_if_ours(location, found.file_id)
        return StopResult(
            "not_running",
            location.shown,
            found.pid,
            (),
            removal.removed,
            found.reason,
            removal.kept_reason,
            removal.by_holder,
        )
    run = _Run(found, checks, location.shown, progress)
    try:
        outcome, reason = _follow(run, steps)
    finally:
        found.handle.close()
    removal = _Removal(False, None)
    if outcome in ("stopped", "not_running"):
        removal = _remove_if_ours(location, _file_id(found.record))
    return StopResult(
        outcome,
        location.shown,
        found.record.pid,
        tuple(run.sent),
        removal.removed,
        reason,
        removal.kept_reason,
        removal.by_holder,
    )


def signal_pidfile(
    path: PathArg,
    sig: signal.Signals | int | str,
    *,
    expect_exe: PathArg | None = None,
    expect_name: str | None = None,
    expect_uid: int | None = None,
    allow_pid1: bool = False,
    allow_self: bool = False,
    trusted_uids: Iterable[int] | None = None,
) -> int:
    """Send `sig` once to the process named by the PID file; return its PID.

    Makes the same checks as `stop` before the signal and sends it the
    same way. Signal 0 sends nothing but runs every check, to ask whether
    the process may be signalled. Never removes the file.

    Raises `PidfileMissing` when there is no file, `NotRunning` when its
    process has exited (or the file is empty and not locked), and
    otherwise what `stop` raises.
    """
    number = signal_number(sig)
    checks = _make_checks(expect_exe, expect_name, expect_uid, allow_pid1, allow_self)
    location = _open_location(path, as_trusted(trusted_uids))
    try:
        found = _find(location, checks)
        if isinstance(found, _NoProcess):
            if found.missing:
                raise PidfileMissing(location.shown, "does not exist")
            raise NotRunning(location.shown, found.reason)
        try:
            _step("signal")
            delivered = found.handle.send(number)
        except PermissionError:
            raise PidfilePermissionError(
                location.shown,
                f"permission denied sending signal {number} to process "
                f"{found.record.pid}",
            ) from None
        finally:
            found.handle.close()
    finally:
        os.close(location.directory.fd)
    pid = found.record.pid
    if not delivered:
        raise NotRunning(location.shown, f"process {pid} exited before the signal")
    logger.debug("sent signal %d to process %d for %s", number, pid, location.shown)
    return pid
