"""Tests for process liveness and identity, and how status and clean use them.

A PID names its writer only if the process started before the file was last
written and the file was written during the current boot. These tests make
files whose modification time is set before or after a live process's start.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pidsafe
from pidsafe import _process
from pidsafe._process import (
    PSUTIL_SLACK_NS,
    StartTime,
    check_writer,
    judge_start,
    parse_stat_start_ticks,
    start_time,
)

SECOND = 1_000_000_000


@pytest.fixture
def sleeper() -> Iterator[tuple[int, int]]:
    """A live process: its PID and its start time in ns since the epoch."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        started = start_time(proc.pid)
        assert started is not None
        yield proc.pid, started.process_ns
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def pidpath(piddir: Path) -> Path:
    return piddir / "app.pid"


def write_pidfile(path: Path, pid: int, mtime_ns: int | None = None) -> None:
    path.write_text(f"{pid}\n")
    path.chmod(0o644)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def dead_pid() -> int:
    """Return the PID of a process that has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait(timeout=30)
    return child.pid


def lock_file(path: Path) -> int:
    """Lock `path` through a new fd and return the fd (caller closes it)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


# --- parsing /proc/<pid>/stat ------------------------------------------------

# Fields 3..22 after the command name; starttime (field 22) is 4242.
TAIL = b" S 1 2 3 0 -1 4194560 10 0 0 0 1 2 0 0 20 0 1 0 4242 1000 50"


@pytest.mark.parametrize(
    "comm",
    [b"(sleep)", b"(a b c)", b"(x) S 1 2)", b"(()))", b"(7 8 9 10 11 12)"],
)
def test_start_ticks_after_last_paren(comm: bytes) -> None:
    assert parse_stat_start_ticks(b"123 " + comm + TAIL) == 4242


@pytest.mark.parametrize("data", [b"", b"123 (sleep)", b"123 (sleep) S 1 2 3"])
def test_start_ticks_missing_field(data: bytes) -> None:
    with pytest.raises(ValueError, match="starttime"):
        parse_stat_start_ticks(data)


@pytest.mark.needs_procfs
def test_start_ticks_of_this_process() -> None:
    with open("/proc/self/stat", "rb") as stream:
        ticks = parse_stat_start_ticks(stream.read())
    assert ticks > 0


# --- judging start times -------------------------------------------------------

BOOT = 1_700_000_000 * SECOND
TICK = 10_000_000


def judge(process_offset: int, mtime_offset: int) -> str:
    started = StartTime(BOOT + process_offset, BOOT, TICK)
    return judge_start(42, BOOT + mtime_offset, started).state


def test_judge_writer_started_first() -> None:
    assert judge(10 * SECOND, 20 * SECOND) == "writer"


def test_judge_recycled_started_later() -> None:
    assert judge(20 * SECOND, 10 * SECOND) == "recycled"


def test_judge_one_tick_of_slack() -> None:
    assert judge(10 * SECOND + TICK, 10 * SECOND) == "writer"
    assert judge(10 * SECOND + TICK + 1, 10 * SECOND) == "recycled"


def test_judge_file_before_boot() -> None:
    assert judge(0, -TICK) == "writer"
    assert judge(0, -TICK - 1) == "before_boot"


def test_judge_reasons() -> None:
    started = StartTime(BOOT + 20 * SECOND, BOOT, TICK)
    recycled = judge_start(42, BOOT + 10 * SECOND, started)
    before = judge_start(42, BOOT - 60 * SECOND, started)
    assert recycled.reason == "process 42 started after the file was written"
    assert before.reason == "the file was written before the last boot"
    assert recycled.stale
    assert before.stale


# --- live processes ------------------------------------------------------------


@pytest.mark.needs_procfs
def test_check_writer_this_process() -> None:
    now = time.time_ns()
    check = check_writer(os.getpid(), now)
    assert check.state == "writer"
    assert not check.stale


def test_check_writer_dead_process() -> None:
    pid = dead_pid()
    check = check_writer(pid, time.time_ns())
    assert check.state == "dead"
    assert check.reason == f"process {pid} is not running"


@pytest.mark.needs_procfs
def test_start_time_matches_psutil(sleeper: tuple[int, int]) -> None:
    psutil = pytest.importorskip("psutil")
    pid, started_ns = sleeper
    created_ns = int(psutil.Process(pid).create_time() * SECOND)
    # On Linux psutil 7.2 adds the start ticks to /proc/stat's btime, which
    # is in whole seconds.
    assert abs(created_ns - started_ns) < 2 * SECOND


@pytest.mark.needs_procfs
def test_psutil_fallback(
    sleeper: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("psutil")
    pid, started_ns = sleeper
    monkeypatch.setattr(_process, "procfs_available", lambda: False)
    started = start_time(pid)
    assert started is not None
    assert started.slack_ns == PSUTIL_SLACK_NS
    assert abs(started.process_ns - started_ns) < 2 * SECOND
    check = check_writer(pid, started_ns - 10 * SECOND)
    assert check.state == "recycled"


def test_no_start_time_source(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr(_process, "procfs_available", lambda: False)
    monkeypatch.setattr(_process.importlib, "import_module", missing)
    check = check_writer(os.getpid(), time.time_ns())
    assert check.state == "unknown"
    assert check.reason is not None
    assert "psutil" in check.reason
    assert not check.stale


# --- status and clean ------------------------------------------------------------


@pytest.mark.needs_procfs
def test_status_recycled_pid(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    write_pidfile(pidpath, pid, started_ns - 5 * SECOND)
    found = pidsafe.status(pidpath)
    assert found.state == "stale"
    assert found.pid == pid
    assert found.reason == f"process {pid} started after the file was written"
    assert found.exit_code == 1


@pytest.mark.needs_procfs
def test_status_live_writer(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    write_pidfile(pidpath, pid, started_ns + SECOND)
    found = pidsafe.status(pidpath)
    assert found.state == "running"
    assert found.pid == pid
    assert found.reason is None


@pytest.mark.needs_procfs
def test_status_file_before_boot(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, _ = sleeper
    started = start_time(pid)
    assert started is not None
    write_pidfile(pidpath, pid, started.boot_ns - 60 * SECOND)
    found = pidsafe.status(pidpath)
    assert found.state == "stale"
    assert found.reason == "the file was written before the last boot"


@pytest.mark.needs_procfs
def test_status_locked_file_is_running(pidpath: Path) -> None:
    pid = dead_pid()
    write_pidfile(pidpath, pid)
    fd = lock_file(pidpath)
    try:
        found = pidsafe.status(pidpath)
    finally:
        os.close(fd)
    assert found.state == "running"
    assert found.pid == pid
    assert found.reason == "lock is held"


@pytest.mark.needs_procfs
def test_status_empty_file(pidpath: Path) -> None:
    pidpath.touch(mode=0o644)
    unlocked = pidsafe.status(pidpath)
    fd = lock_file(pidpath)
    try:
        locked = pidsafe.status(pidpath)
    finally:
        os.close(fd)
    assert unlocked.state == "stale"
    assert unlocked.reason == "is empty and not locked"
    assert locked.state == "starting"
    assert locked.exit_code == 0


@pytest.mark.parametrize("contents", [b"", b"1\n", b"garbage\n"])
def test_status_never_locks(
    pidpath: Path, contents: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidpath.write_bytes(contents)
    pidpath.chmod(0o644)
    calls: list[tuple[int, int]] = []

    def record(fd: int, operation: int) -> None:
        calls.append((fd, operation))

    monkeypatch.setattr(fcntl, "flock", record)
    pidsafe.status(pidpath)
    assert calls == []


@pytest.mark.needs_procfs
def test_clean_keeps_live_writer(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    write_pidfile(pidpath, pid, started_ns + SECOND)
    kept = pidsafe.clean_pidfile(pidpath)
    assert kept.state == "running"
    assert kept.pid == pid
    assert pidpath.exists()


@pytest.mark.needs_procfs
def test_clean_removes_recycled_pid(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    write_pidfile(pidpath, pid, started_ns - 5 * SECOND)
    removed = pidsafe.clean_pidfile(pidpath)
    assert removed.state == "stale"
    assert removed.reason == f"process {pid} started after the file was written"
    assert not pidpath.exists()


def test_clean_removes_dead_pid(pidpath: Path) -> None:
    pid = dead_pid()
    write_pidfile(pidpath, pid)
    removed = pidsafe.clean_pidfile(pidpath)
    assert removed.state == "stale"
    assert removed.reason == f"process {pid} is not running"
    assert not pidpath.exists()


# --- liveness behind hidepid -----------------------------------------------------


def unused_uid() -> int:
    """Return a uid with no passwd entry, to run a step as an unknown user."""
    for uid in range(61_000, 62_000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no unused uid in 61000..61999")


@pytest.mark.needs_mountns
def test_alive_behind_hidepid() -> None:
    # With /proc mounted hidepid=2, an unprivileged user sees no /proc entry
    # for another user's process, yet kill(pid, 0) succeeds.
    proc = subprocess.Popen(["sleep", "60"])
    uid = unused_uid()
    probe = (
        "import os, pidsafe\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        f"print(os.path.exists('/proc/{proc.pid}'), pidsafe.is_alive({proc.pid}))\n"
    )
    script = (
        "mount -t proc -o hidepid=2 proc /proc\n"
        f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n"
    )
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


def _visible_kernel_thread() -> int | None:
    for entry in sorted(os.listdir("/proc"), key=lambda name: (len(name), name)):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stream:
                fields = stream.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if int(fields[6]) & 0x00200000:
            return int(entry)
    return None


@pytest.mark.needs_procfs
def test_kernel_thread_pid_is_stale(tmp_path: Path) -> None:
    kthread = _visible_kernel_thread()
    if kthread is None:
        pytest.skip("this PID namespace shows no kernel thread")
    path = tmp_path / "kthread.pid"
    path.write_text(f"{kthread}\n")

    found = pidsafe.status(path)

    assert found.state == "stale"
    assert found.reason == f"process {kthread} is a kernel thread, not a service"
