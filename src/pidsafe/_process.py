"""Process liveness and identity.

``kill(pid, 0)`` says whether a PID exists, not whether it is a live process:
on Linux it also succeeds for a thread ID (the kernel accepts any task ID)
and for a zombie that has exited but not been reaped. Where ``/proc`` is
mounted, both are checked there. Liveness fails closed: any error other
than ESRCH (no such process) and EPERM (exists, owned by another user) is
raised, never read as "dead".

Identity answers whether a live process can be the one that wrote a PID
file, because a PID is reused once its process has exited: see
`check_writer`.
"""

from __future__ import annotations

import functools
import importlib
import os
import time
from typing import Final, Literal, NamedTuple

from ._parse import pid_max

_HAS_BOOTTIME: Final = hasattr(time, "CLOCK_BOOTTIME")


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


# Process identity: can the live process with a file's PID be its writer?
#
# A process that wrote a file started before the file's last modification,
# and a file modified before the current boot cannot name a process of this
# boot. Both checks compare wall-clock times, so a clock step between the
# write and the check can mislead them. A forward step makes the writer look
# younger than its file (reported as a recycled PID). A backward step large
# enough to make a recycled process look older than the file hides the reuse.

#: Slack for start times from psutil, whose precision varies by platform.
#: It errs towards "may be the writer", which never takes over a live file.
PSUTIL_SLACK_NS: Final = 1_000_000_000

WriterState = Literal["writer", "dead", "recycled", "before_boot", "unknown"]

#: States in which the file's process is certainly not its live writer.
STALE_STATES: Final[frozenset[str]] = frozenset(("dead", "recycled", "before_boot"))


class StartTime(NamedTuple):
    """When a process and the current boot started, in ns since the epoch."""

    process_ns: int
    boot_ns: int
    slack_ns: int  # the comparison's tolerance for clock resolution


class WriterCheck(NamedTuple):
    """Whether a file's process is alive and can have written the file."""

    state: WriterState
    reason: str | None  # why the state was chosen; None for "writer"

    @property
    def stale(self) -> bool:
        """Whether the file's process is certainly not its live writer."""
        return self.state in STALE_STATES


def parse_stat_start_ticks(data: bytes) -> int:
    """Return field 22 (starttime, in clock ticks) of a ``/proc/<pid>/stat``.

    Field 2 is the command name in parentheses, which may itself contain
    spaces and ")", so the fields are counted from the last ")". Raises
    ValueError when the text has no such field.
    """
    _, paren, rest = data.rpartition(b")")
    fields = rest.split()
    # After ")" come field 3 (state) onwards, so field 22 is index 19.
    if not paren or len(fields) < 20:
        raise ValueError("/proc/<pid>/stat has no starttime field")
    return int(fields[19])


def _boot_time_ns() -> int:
    # CLOCK_BOOTTIME counts from boot and includes suspend, as the kernel's
    # starttime does, so the difference is the boot's wall-clock time. Unlike
    # /proc/stat's btime it is not rounded to whole seconds.
    now = time.clock_gettime_ns(time.CLOCK_REALTIME)
    since_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    return now - since_boot


def _procfs_start_time(pid: int) -> StartTime | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            data = stream.read(4096)
    except (FileNotFoundError, ProcessLookupError):
        if _exists(pid):
            return None  # hidden by the hidepid mount option of /proc
        raise ProcessLookupError(pid) from None
    return start_time_from_ticks(parse_stat_start_ticks(data))


def start_time_from_ticks(ticks: int) -> StartTime:
    """Convert a ``/proc/<pid>/stat`` starttime in clock ticks to a StartTime."""
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    tick_ns = 1_000_000_000 // ticks_per_second
    started = ticks * 1_000_000_000 // ticks_per_second
    boot_ns = _boot_time_ns()
    return StartTime(boot_ns + started, boot_ns, tick_ns)


def _psutil_start_time(pid: int) -> StartTime | None:
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        return None
    try:
        created = float(psutil.Process(pid).create_time())
        boot = float(psutil.boot_time())
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None
    except psutil.Error:
        return None
    return StartTime(int(created * 1e9), int(boot * 1e9), PSUTIL_SLACK_NS)


def start_time(pid: int) -> StartTime | None:
    """Return when `pid` and the current boot started, or None if unknown.

    On Linux the process's start comes from field 22 of
    ``/proc/<pid>/stat`` (clock ticks since boot) and the boot's wall-clock
    time from ``CLOCK_REALTIME - CLOCK_BOOTTIME``, with one clock tick of
    slack. Elsewhere it comes from psutil's ``create_time`` and
    ``boot_time`` when psutil is installed, with `PSUTIL_SLACK_NS` of
    slack. Returns None when neither source can see the process, and
    raises ProcessLookupError when the process is gone.
    """
    if procfs_available() and _HAS_BOOTTIME:
        return _procfs_start_time(pid)
    return _psutil_start_time(pid)


def judge_start(pid: int, mtime_ns: int, started: StartTime) -> WriterCheck:
    """Judge from start times whether `pid` can have written the file.

    `mtime_ns` is the file's modification time in ns since the epoch.
    """
    if mtime_ns < started.boot_ns - started.slack_ns:
        return WriterCheck("before_boot", "the file was written before the last boot")
    if started.process_ns > mtime_ns + started.slack_ns:
        return WriterCheck(
            "recycled", f"process {pid} started after the file was written"
        )
    return WriterCheck("writer", None)


def check_writer(pid: int, mtime_ns: int) -> WriterCheck:
    """Judge whether `pid` is alive and can have written a file.

    `mtime_ns` is the file's modification time in ns since the epoch. The
    state is "dead" when `is_alive` returns False, "before_boot" or
    "recycled" when the start times rule the process out (see
    `judge_start`), "unknown" when no start time is available, and
    "writer" otherwise. A kernel thread is "recycled". Raises what
    `is_alive` raises.
    """
    if not is_alive(pid):
        return WriterCheck("dead", f"process {pid} is not running")
    if _is_kernel_thread(pid):
        # No service's PID file can name a kernel thread, so its PID was
        # reused, as low PIDs are after a reboot.
        return WriterCheck(
            "recycled", f"process {pid} is a kernel thread, not a service"
        )
    try:
        started = start_time(pid)
    except ProcessLookupError:
        return WriterCheck("dead", f"process {pid} is not running")
    if started is None:
        return WriterCheck(
            "unknown",
            f"the start time of process {pid} is unknown: its /proc entry "
            "is hidden, or there is no /proc and psutil cannot read it",
        )
    return judge_start(pid, mtime_ns, started)


# Process inspection before a signal: is this PID a process that may be
# signalled, and is it still the process that was checked before?

#: Bit of field 9 (flags) of ``/proc/<pid>/stat`` that marks a kernel thread.
PF_KTHREAD: Final = 0x00200000

#: Bytes of a command name that Linux keeps (TASK_COMM_LEN is 16 with the NUL).
COMM_MAX: Final = 15


class ProcessInfo(NamedTuple):
    """A process's identity as ``/proc`` (or psutil) showed it at one moment.

    A field is None where the source cannot tell. Without ``/proc``, `tgid`
    is the PID itself, because only Linux accepts a thread ID where a PID
    belongs.
    """

    pid: int
    tgid: int | None  # thread group ID: the process a thread belongs to
    state: str  # one letter as in /proc/<pid>/stat ("Z" zombie), "?" unknown
    kernel_thread: bool
    ruid: int | None  # real uid
    start: StartTime | None
    start_token: float | None  # equal for the same process, never for another
    name: bytes | None  # command name, at most COMM_MAX bytes on Linux


def _is_kernel_thread(pid: int) -> bool:
    """Return whether /proc marks `pid` as a kernel thread (False without /proc)."""
    if not procfs_available():
        return False
    try:
        data = _read_proc_file(pid, "stat")
    except ProcessLookupError:
        return False
    # fields[0] after the command name is field 3, so field 9 is fields[6].
    fields = data.rpartition(b")")[2].split()
    return bool(int(fields[6]) & PF_KTHREAD)


def _read_proc_file(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as stream:
            return stream.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None


def _status_field(text: bytes, key: bytes) -> list[bytes]:
    for line in text.splitlines():
        if line.startswith(key):
            return line.split()[1:]
    raise ValueError(f"/proc status has no {key.decode()} line")


def _procfs_info(pid: int) -> ProcessInfo:
    stat_data = _read_proc_file(pid, "stat")
    status_text = _read_proc_file(pid, "status")
    # The command name sits between the first "(" and the last ")", and may
    # itself contain spaces and parentheses. It is the value of
    # /proc/<pid>/comm, read here with the other fields in one read.
    opening = stat_data.index(b"(")
    head, _, rest = stat_data.rpartition(b")")
    name = head[opening + 1 :]
    fields = rest.split()
    # fields[0] is field 3 (state), so field 9 (flags) is fields[6].
    flags = int(fields[6])
    ticks = parse_stat_start_ticks(stat_data)
    return ProcessInfo(
        pid,
        int(_status_field(status_text, b"Tgid:")[0]),
        fields[0].decode("ascii", "replace"),
        bool(flags & PF_KTHREAD),
        int(_status_field(status_text, b"Uid:")[0]),
        start_time_from_ticks(ticks) if _HAS_BOOTTIME else None,
        float(ticks),
        name,
    )


def _psutil_info(pid: int) -> ProcessInfo:
    try:
        psutil = importlib.import_module("psutil")
    except ImportError:
        return ProcessInfo(pid, pid, "?", False, None, None, None, None)
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            created = float(process.create_time())
            ruid = int(process.uids().real)
            name = os.fsencode(process.name())
            zombie = process.status() == psutil.STATUS_ZOMBIE
        boot = float(psutil.boot_time())
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None
    except psutil.Error:
        return ProcessInfo(pid, pid, "?", False, None, None, None, None)
    start = StartTime(int(created * 1e9), int(boot * 1e9), PSUTIL_SLACK_NS)
    # NOTE: psutil shows no kernel-thread flag, so kernel processes on the
    # BSDs are not recognised here.
    state = "Z" if zombie else "R"
    return ProcessInfo(pid, pid, state, False, ruid, start, created, name)


def inspect_process(pid: int) -> ProcessInfo:
    """Return the identity of `pid` from ``/proc``, or else from psutil.

    Raises ProcessLookupError when ``/proc`` has no entry for `pid`, which
    means it is gone or hidden by the ``hidepid`` mount option; callers
    that hold a pidfd can tell which. Without ``/proc`` and psutil, every
    optional field is None.
    """
    validate_pid(pid)
    if procfs_available():
        return _procfs_info(pid)
    return _psutil_info(pid)


def executable_id(pid: int) -> tuple[int, int] | None:
    """Return (st_dev, st_ino) of the executable `pid` runs, or None.

    On Linux this stats ``/proc/<pid>/exe``, which still works after the
    file was deleted or replaced, and then names the old inode. Elsewhere
    it stats the path psutil reports. Returns None when no source can tell
    (a kernel thread has no executable). Raises ProcessLookupError when the
    process is gone and PermissionError when the caller may not look.
    """
    if procfs_available():
        try:
            st = os.stat(f"/proc/{pid}/exe")
        except FileNotFoundError:
            if _exists(pid):
                return None
            raise ProcessLookupError(pid) from None
        return st.st_dev, st.st_ino
    try:
        psutil = importlib.import_module("psutil")
        path = psutil.Process(pid).exe()
    except ImportError:
        return None
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None
    except psutil.AccessDenied:
        raise PermissionError(f"cannot see the executable of process {pid}") from None
    if not path:
        return None
    st = os.stat(path)
    return st.st_dev, st.st_ino
