"""stop and signal_pidfile against real processes, and the stop command.

The processes under test run ``signal_child.py``, which appends every
signal it catches to a log, so a test can tell which process received
what. A refusal is checked three ways: the exception, an empty log, and
no signal other than 0 passed to ``pidfd_send_signal`` or ``os.kill``.
Tests that name processes the test did not start (PID 1, a kernel
thread) replace both calls with a recorder that never sends a real
signal. Every wait is bounded by `WAIT_LIMIT`.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import pwd
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest

import pidsafe
from _users import SOURCE_DIR, interpreter_for, run_as, unprivileged_users
from child_process import WAIT_LIMIT, lock_holder, reaped_pid, zombie
from pidsafe import (
    IdentityMismatch,
    InsecurePidfile,
    NotRunning,
    PidfileError,
    PidfileMissing,
    StopProgress,
    _process,
    _stop,
    signal_pidfile,
    stop,
)

SECOND = 1_000_000_000
CHILD_SOURCE = Path(__file__).with_name("signal_child.py").read_text()
PID_REUSE = str(Path(__file__).with_name("pid_reuse.py"))
_log_numbers = itertools.count()


class Child(NamedTuple):
    process: subprocess.Popen[str]
    log: Path
    ready: str  # the child's first line: "ready" or "ready TID"

    @property
    def pid(self) -> int:
        return self.process.pid

    def received(self) -> list[str]:
        """Names of the signals the child recorded, in order."""
        lines = self.log.read_text().splitlines()
        return [line.split()[0] for line in lines if not line.startswith("exit")]

    def alive(self) -> bool:
        return self.process.poll() is None


def _read_ready(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], WAIT_LIMIT)
    if not ready:
        raise TimeoutError(f"child {process.pid} printed nothing in {WAIT_LIMIT} s")
    line = process.stdout.readline().strip()
    if not line.startswith("ready"):
        raise RuntimeError(f"child {process.pid} printed {line!r}, not 'ready'")
    return line


@contextmanager
def signal_child(
    log_dir: Path,
    mode: str,
    *options: str,
    user: Any = None,
    interpreter: str = sys.executable,
) -> Iterator[Child]:
    """Run ``signal_child.py`` for the block, as `user` if given.

    The child is killed by its PID and reaped when the block ends.
    """
    log = log_dir / f"signals-{next(_log_numbers)}.log"
    log.touch(mode=0o600)
    extra: dict[str, Any] = {}
    if user is not None:
        os.chown(log, user.uid, user.gid)
        extra = {"user": user.uid, "group": user.gid, "extra_groups": [], "cwd": "/"}
    process = subprocess.Popen(
        [interpreter, "-c", CHILD_SOURCE, str(log), mode, *options],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        **extra,
    )
    try:
        yield Child(process, log, _read_ready(process))
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT_LIMIT)
        assert process.stdout is not None
        process.stdout.close()


def wait_exit(child: Child) -> int:
    return child.process.wait(WAIT_LIMIT)


def write_pid(path: Path, pid: int, *, mtime_ns: int | None = None) -> Path:
    path.write_text(f"{pid}\n")
    path.chmod(0o644)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def start_ns(pid: int) -> int:
    started = _process.start_time(pid)
    assert started is not None
    return started.process_ns


@pytest.fixture
def pidfile(piddir: Path) -> Path:
    return piddir / "app.pid"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Record every pidfd_send_signal and os.kill call, and make it."""
    calls: list[tuple[str, int, int]] = []
    real_send = signal.pidfd_send_signal
    real_kill = os.kill

    def send(pidfd: int, sig: int, *args: Any) -> None:
        calls.append(("pidfd", pidfd, sig))
        real_send(pidfd, sig, *args)

    def kill(pid: int, sig: int) -> None:
        calls.append(("kill", pid, sig))
        real_kill(pid, sig)

    monkeypatch.setattr(signal, "pidfd_send_signal", send)
    monkeypatch.setattr(os, "kill", kill)
    return calls


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Let only signal 0 through; record any other signal and never send it.

    For tests that name processes the test did not start, so that a bug
    cannot signal them.
    """
    attempts: list[tuple[str, int, int]] = []
    real_send = signal.pidfd_send_signal
    real_kill = os.kill

    def send(pidfd: int, sig: int, *args: Any) -> None:
        if sig != 0:
            attempts.append(("pidfd", pidfd, sig))
            raise AssertionError(f"test tried to send signal {sig} through a pidfd")
        real_send(pidfd, 0)

    def kill(pid: int, sig: int) -> None:
        if sig != 0:
            attempts.append(("kill", pid, sig))
            raise AssertionError(f"test tried to send signal {sig} to {pid}")
        real_kill(pid, 0)

    monkeypatch.setattr(signal, "pidfd_send_signal", send)
    monkeypatch.setattr(os, "kill", kill)
    return attempts


def real_signals(calls: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    return [call for call in calls if call[2] != 0]


@pytest.fixture
def hook() -> Iterator[Callable[[Callable[[str], None]], None]]:
    """Install a step hook in pidsafe._stop for the test."""

    def install(function: Callable[[str], None]) -> None:
        _stop.step_hook = function

    yield install
    _stop.step_hook = None


@pytest.fixture
def kill_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make stop use kill() as it does where pidfds are missing."""
    monkeypatch.setattr(_stop, "USES_PIDFD", False)


# Stopping.


@pytest.mark.needs_pidfd
def test_uses_pidfd_on_linux() -> None:
    assert pidsafe.USES_PIDFD is True


def test_stop_term_exits(piddir: Path, pidfile: Path, sent: list[Any]) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="TERM/5/KILL/5")

        assert wait_exit(child) == 0
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "stopped"
    assert result.exit_code == 0
    assert result.pid == child.pid
    assert result.path == str(pidfile)
    assert [s.signal for s in result.signals] == [signal.SIGTERM]
    assert result.removed is True
    assert result.kept_reason is None
    assert result.reason == f"process {child.pid} exited after SIGTERM"
    assert not pidfile.exists()


@pytest.mark.needs_pidfd
def test_stop_signals_through_pidfd(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)
        stop(pidfile, schedule="TERM/5")
        wait_exit(child)

    assert [call[0] for call in real_signals(sent)] == ["pidfd"]
    assert real_signals(sent)[0][2] == signal.SIGTERM


def test_stop_kill_after_ignored_term(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)
        started = time.monotonic()

        result = stop(pidfile, schedule="TERM/0.5/KILL/5")

        elapsed = time.monotonic() - started
        assert wait_exit(child) == -signal.SIGKILL
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "stopped"
    assert result.exit_code == 0
    assert [s.signal for s in result.signals] == [signal.SIGTERM, signal.SIGKILL]
    assert result.signals[1].time - result.signals[0].time >= 0.5
    assert elapsed >= 0.5
    assert result.removed is True


def test_stop_without_kill_leaves_process(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="TERM/0.3")
        time.sleep(0.3)

        assert child.alive()
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "still_running"
    assert result.exit_code == 2
    assert [s.signal for s in result.signals] == [signal.SIGTERM]
    assert result.removed is False
    assert result.reason == (
        f"process {child.pid} is still running at the end of the schedule"
    )
    assert pidfile.exists()


def test_stop_bare_timeout_uses_stop_signal(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="0.2", signal="USR1")

        assert wait_exit(child) == -signal.SIGKILL
        assert child.received() == ["SIGUSR1"]
    assert [s.signal for s in result.signals] == [signal.SIGUSR1, signal.SIGKILL]


def test_stop_signal_replaces_default_term(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit", "--exit-after", "1") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, signal=signal.SIGINT)

        wait_exit(child)
        assert child.received() == ["SIGINT"]
    assert [s.signal for s in result.signals] == [signal.SIGINT]


def test_stop_forever_repeats(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore", "--exit-after", "3") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="USR1/0.05/forever/USR2/0.05")

        assert wait_exit(child) == 0
        assert child.received() == ["SIGUSR1", "SIGUSR2", "SIGUSR2"]
    assert result.outcome == "stopped"


def test_stop_reports_progress(piddir: Path, pidfile: Path) -> None:
    reports: list[StopProgress] = []
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        stop(pidfile, schedule="TERM/0.5/KILL/5", progress=reports.append)
        wait_exit(child)

    assert len(reports) >= 3
    first = reports[0]
    assert first.pid == child.pid
    assert first.signal is signal.SIGTERM
    assert first.timeout == 0.5
    assert 0.4 < first.remaining <= 0.5
    remaining = [report.remaining for report in reports if report.timeout == 0.5]
    assert remaining == sorted(remaining, reverse=True)


@pytest.mark.parametrize(
    ("schedule", "stop_signal", "message"),
    [
        ("TERM/x", None, "invalid schedule 'TERM/x': unknown signal name 'x'"),
        ("", None, "invalid schedule '': schedule '' has an empty item"),
        (
            "TERM/1",
            "HUP",
            "a stop signal applies only to a schedule that is one timeout, and "
            "'TERM/1' names its own signals; put SIGHUP in the schedule instead",
        ),
        ("5", "0", "invalid stop signal '0': signal 0 stops nothing"),
    ],
    ids=["unknown-signal", "empty", "signal-and-schedule", "signal-zero"],
)
def test_stop_invalid_schedule(
    pidfile: Path, schedule: str, stop_signal: str | None, message: str
) -> None:
    write_pid(pidfile, reaped_pid())

    with pytest.raises(ValueError, match=r"schedule|signal") as caught:
        stop(pidfile, schedule=schedule, signal=stop_signal)

    assert str(caught.value) == message
    assert pidfile.exists()


# Nothing to stop.


def test_stop_absent(pidfile: Path) -> None:
    result = stop(pidfile)

    assert result.outcome == "not_running"
    assert result.exit_code == 1
    assert result.pid is None
    assert result.reason == "no PID file"
    assert result.removed is False


def test_stop_dead_pid_removes_file(pidfile: Path, sent: list[Any]) -> None:
    pid = reaped_pid()
    write_pid(pidfile, pid)

    result = stop(pidfile)

    assert result.outcome == "not_running"
    assert result.exit_code == 1
    assert result.pid == pid
    assert result.reason == f"process {pid} is not running"
    assert result.signals == ()
    assert result.removed is True
    assert not pidfile.exists()
    assert real_signals(sent) == []


@pytest.mark.needs_procfs
def test_stop_zombie_counts_as_exited(pidfile: Path, sent: list[Any]) -> None:
    with zombie() as pid:
        write_pid(pidfile, pid)

        result = stop(pidfile)

    assert result.outcome == "not_running"
    assert result.reason == f"process {pid} has exited and waits to be reaped"
    assert result.removed is True
    assert real_signals(sent) == []


def test_stop_empty_unlocked_file(pidfile: Path) -> None:
    pidfile.touch(mode=0o644)

    result = stop(pidfile)

    assert result.outcome == "not_running"
    assert result.reason == "the PID file is empty and not locked"
    assert result.removed is True
    assert not pidfile.exists()


@pytest.mark.needs_procfs
def test_stop_empty_locked_file(pidfile: Path) -> None:
    pidfile.touch(mode=0o644)

    with lock_holder(pidfile, write_pid=False), pytest.raises(PidfileError) as caught:
        stop(pidfile)

    assert caught.value.errno == errno.EAGAIN
    assert "holds no PID yet" in caught.value.reason
    assert pidfile.exists()


# Refusals: nothing is sent.


def assert_untouched(child: Child, sent: list[Any]) -> None:
    time.sleep(0.05)
    assert child.alive()
    assert child.received() == []
    assert real_signals(sent) == []


@pytest.mark.needs_procfs
def test_stop_refuses_recycled_pid(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid, mtime_ns=start_ns(child.pid) - 5 * SECOND)
        before = pidfile.stat()

        with pytest.raises(IdentityMismatch) as caught:
            stop(pidfile)

        assert_untouched(child, sent)
    error = caught.value
    assert error.path == str(pidfile)
    assert error.reason == (
        f"refusing to signal process {child.pid}: it started after the file "
        "was last written, so it cannot have written it and the PID was reused"
    )
    assert str(error).startswith(f"PID file {pidfile}: ")
    assert pidfile.stat().st_ino == before.st_ino
    assert pidfile.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.needs_procfs
def test_stop_refuses_file_before_boot(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        started = _process.start_time(child.pid)
        assert started is not None
        write_pid(pidfile, child.pid, mtime_ns=started.boot_ns - 60 * SECOND)

        with pytest.raises(IdentityMismatch) as caught:
            stop(pidfile)

        assert_untouched(child, sent)
    assert caught.value.reason == (
        f"refusing to signal process {child.pid}: the file was written before "
        "the last boot, so it cannot have written it"
    )


@pytest.mark.needs_procfs
def test_signal_refuses_recycled_pid(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid, mtime_ns=start_ns(child.pid) - 5 * SECOND)

        with pytest.raises(IdentityMismatch):
            signal_pidfile(pidfile, signal.SIGHUP)

        assert_untouched(child, sent)


@pytest.mark.needs_procfs
@pytest.mark.parametrize("fallback", [False, True], ids=["pidfd", "kill"])
def test_stop_refuses_thread_id(
    piddir: Path,
    pidfile: Path,
    sent: list[Any],
    monkeypatch: pytest.MonkeyPatch,
    fallback: bool,
) -> None:
    if fallback:
        monkeypatch.setattr(_stop, "USES_PIDFD", False)
    with signal_child(piddir, "exit", "--thread") as child:
        thread_id = int(child.ready.split()[1])
        assert thread_id != child.pid
        write_pid(pidfile, thread_id)

        with pytest.raises(IdentityMismatch) as caught:
            stop(pidfile)

        assert_untouched(child, sent)
    assert caught.value.reason == (
        f"refusing to signal {thread_id}: it is a thread of process {child.pid}, "
        "not a process, and a signal to it would reach the whole process"
    )


def test_stop_refuses_pid1(pidfile: Path, blocked: list[Any]) -> None:
    write_pid(pidfile, 1)

    with pytest.raises(IdentityMismatch) as caught:
        stop(pidfile)
    with pytest.raises(IdentityMismatch):
        signal_pidfile(pidfile, signal.SIGTERM)

    assert caught.value.reason == (
        "refusing to signal process 1, the init process; allow it explicitly "
        "with allow_pid1 (--allow-pid1)"
    )
    assert blocked == []


@pytest.mark.needs_pidfd
def test_signal_zero_allowed_pid1(pidfile: Path, blocked: list[Any]) -> None:
    # Signal 0 runs every check and sends nothing; the `blocked` fixture
    # would stop any real signal before it reached PID 1.
    write_pid(pidfile, 1)

    assert signal_pidfile(pidfile, 0, allow_pid1=True) == 1
    assert blocked == []


def test_stop_refuses_self(pidfile: Path, sent: list[Any]) -> None:
    write_pid(pidfile, os.getpid())

    with pytest.raises(IdentityMismatch) as caught:
        stop(pidfile)

    assert caught.value.reason == (
        f"refusing to signal process {os.getpid()}: it is the calling process "
        "itself; allow it explicitly with allow_self (--allow-self)"
    )
    assert real_signals(sent) == []


def test_signal_allowed_self(pidfile: Path) -> None:
    write_pid(pidfile, os.getpid())
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _: received.append(signum))
    try:
        pid = signal_pidfile(pidfile, "USR1", allow_self=True)
        deadline = time.monotonic() + WAIT_LIMIT
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGUSR1, previous)

    assert pid == os.getpid()
    assert received == [signal.SIGUSR1]


def _kernel_thread() -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            info = _process.inspect_process(int(entry))
        except (ProcessLookupError, OSError):
            continue
        if info.kernel_thread:
            return int(entry)
    return None


@pytest.mark.needs_procfs
def test_stop_refuses_kernel_thread(pidfile: Path, blocked: list[Any]) -> None:
    pid = _kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread is visible in this PID namespace")
    write_pid(pidfile, pid)

    with pytest.raises(IdentityMismatch) as caught:
        stop(pidfile)

    assert caught.value.reason == (
        f"refusing to signal process {pid}: it is a kernel thread"
    )
    assert blocked == []


def test_stop_refuses_untrusted_root_file(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)
        pidfile.chmod(0o666)

        with pytest.raises(InsecurePidfile) as caught:
            stop(pidfile)

        assert_untouched(child, sent)
    assert caught.value.reason == (
        f"refusing to signal process {child.pid}: the file is untrusted "
        "(file is writable by group and others) and owned by root, so it may "
        "not name any process"
    )


# The lock.


@pytest.mark.needs_procfs
def test_held_lock_corroborates(piddir: Path, pidfile: Path) -> None:
    # The holder's own lock outweighs a start time that suggests a reused
    # PID, which a forward clock step after the write could cause.
    with signal_child(piddir, "exit", "--lock", str(pidfile)) as child:
        backdated = start_ns(child.pid) - 5 * SECOND
        os.utime(pidfile, ns=(backdated, backdated))

        result = stop(pidfile, schedule="TERM/5")

        assert wait_exit(child) == 0
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "stopped"
    assert result.removed is True


@pytest.mark.needs_procfs
def test_other_holder_lock_refused(
    piddir: Path, pidfile: Path, sent: list[Any]
) -> None:
    # Anyone who can open the file can take its flock, so a lock held by
    # another process proves nothing about the PID in the file.
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid, mtime_ns=start_ns(child.pid) - 5 * SECOND)
        with lock_holder(pidfile, write_pid=False) as holder:
            with pytest.raises(IdentityMismatch) as caught:
                stop(pidfile)

            assert_untouched(child, sent)
    assert caught.value.reason.endswith(
        f"; the file's lock is held by process {holder}, not by it"
    )


@pytest.mark.needs_procfs
def test_stop_keeps_file_locked_by_other(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)
        with lock_holder(pidfile, write_pid=False):
            result = stop(pidfile, schedule="TERM/5")

            assert pidfile.exists()
        wait_exit(child)
    assert result.outcome == "stopped"
    assert result.removed is False
    assert result.kept_reason == "running: lock is held"


# Matchers.


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")


@pytest.mark.needs_procfs
def test_expect_matchers_match(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)

        result = stop(
            pidfile,
            schedule="TERM/5",
            expect_exe=os.path.realpath(sys.executable),
            expect_name=_comm(child.pid),
            expect_uid=os.getuid(),
        )

        wait_exit(child)
    assert result.outcome == "stopped"


@pytest.mark.needs_procfs
def test_expect_name_compares_15_bytes(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit", "--name", "a-long-daemon-name") as child:
        write_pid(pidfile, child.pid)
        assert _comm(child.pid) == "a-long-daemon-n"

        result = stop(pidfile, schedule="TERM/5", expect_name="a-long-daemon-name")

        wait_exit(child)
    assert result.outcome == "stopped"


@pytest.mark.needs_procfs
@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ({"expect_exe": "/bin/sh"}, "it does not run /bin/sh"),
        ({"expect_name": "other"}, "it is named {comm!r}, not 'other'"),
        ({"expect_uid": 12345}, "it runs as uid {uid}, not as the expected uid 12345"),
    ],
    ids=["exe", "name", "uid"],
)
def test_expect_matchers_refuse(
    piddir: Path, pidfile: Path, sent: list[Any], option: dict[str, Any], reason: str
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)
        expected = reason.format(comm=_comm(child.pid), uid=os.getuid())

        with pytest.raises(IdentityMismatch) as caught:
            stop(pidfile, **option)

        assert_untouched(child, sent)
    assert caught.value.reason == f"refusing to signal process {child.pid}: {expected}"


def test_expect_exe_missing_raises(pidfile: Path) -> None:
    write_pid(pidfile, reaped_pid())

    with pytest.raises(FileNotFoundError):
        stop(pidfile, expect_exe="/nonexistent/daemon")


@pytest.mark.needs_procfs
def test_recheck_before_next_signal(piddir: Path, pidfile: Path) -> None:
    # The child renames itself when it gets SIGTERM, so the KILL step's
    # check no longer matches expect_name and the schedule ends there.
    with signal_child(piddir, "rename", "--name", "daemon") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="TERM/0.2/KILL/5", expect_name="daemon")

        assert child.alive()
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "failed"
    assert result.exit_code == 3
    assert [s.signal for s in result.signals] == [signal.SIGTERM]
    assert result.reason == (
        f"stopped sending signals to process {child.pid}: it is named "
        "'renamed', not 'daemon'"
    )
    assert result.removed is False


@pytest.mark.needs_procfs
def test_recheck_after_initial_wait(piddir: Path, pidfile: Path) -> None:
    # A schedule may wait before its first signal. The check made before
    # the wait is stale by then, so the process is checked again, and a
    # failure before anything was sent raises like the first check.
    with signal_child(piddir, "rename", "--name", "daemon") as child:
        write_pid(pidfile, child.pid)
        renamer = threading.Timer(0.1, os.kill, (child.pid, signal.SIGUSR1))
        renamer.start()

        with pytest.raises(IdentityMismatch) as caught:
            stop(pidfile, schedule="0.5/TERM/5", expect_name="daemon")

        renamer.join(WAIT_LIMIT)
        assert child.alive()
        assert child.received() == ["SIGUSR1"]
    assert caught.value.reason == (
        f"refusing to signal process {child.pid}: it is named 'renamed', not 'daemon'"
    )


# Races through the test seam.


@pytest.mark.needs_procfs
def test_file_replaced_after_read(
    piddir: Path, pidfile: Path, hook: Callable[..., None]
) -> None:
    # The file names the checked process when it is read; replacing it
    # afterwards changes neither the process signalled nor the file removed.
    with signal_child(piddir, "exit") as checked, signal_child(piddir, "exit") as decoy:
        write_pid(pidfile, checked.pid)
        replacement = write_pid(piddir / "replacement", decoy.pid)

        def replace(step: str) -> None:
            if step == "read":
                os.rename(replacement, pidfile)

        hook(replace)
        result = stop(pidfile, schedule="TERM/5")

        assert wait_exit(checked) == 0
        assert checked.received() == ["SIGTERM"]
        time.sleep(0.05)
        assert decoy.alive()
        assert decoy.received() == []
    assert result.pid == checked.pid
    assert result.outcome == "stopped"
    assert result.removed is False
    assert result.kept_reason == "was replaced since it was read; left it"
    assert pidfile.read_text() == f"{decoy.pid}\n"


@pytest.mark.needs_pidfd
def test_reaped_before_signal_gets_nothing(
    piddir: Path, pidfile: Path, hook: Callable[..., None], sent: list[Any]
) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)

        def reap(step: str) -> None:
            if step == "signal":
                child.process.kill()
                child.process.wait(WAIT_LIMIT)

        hook(reap)
        result = stop(pidfile, schedule="TERM/5")

        assert child.received() == []
    assert result.outcome == "not_running"
    assert result.signals == ()
    assert result.reason == f"process {child.pid} exited before any signal"
    # The one attempt went to the pidfd, which refers to the reaped process;
    # the only kill() was the test's own.
    assert [call[0] for call in real_signals(sent)] == ["kill", "pidfd"]
    assert real_signals(sent)[0] == ("kill", child.pid, signal.SIGKILL)
    assert result.removed is True


def _pid_reuse(tmp_path: Path, *options: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            *("unshare", "--pid", "--fork", "--mount-proc"),
            *(sys.executable, PID_REUSE, str(tmp_path), *options),
        ],
        capture_output=True,
        text=True,
        timeout=3 * WAIT_LIMIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["decoy"] == report["victim"], "the decoy did not get the PID"
    return report


@pytest.mark.needs_mountns
@pytest.mark.needs_pidfd
@pytest.mark.parametrize("seam", ["opened", "signal"])
def test_reused_pid_gets_nothing(tmp_path: Path, seam: str) -> None:
    # In a private PID namespace the checked process is reaped and its PID
    # given to a decoy at `seam`: after the pidfd was opened, or after the
    # final check. The pidfd still refers to the reaped process.
    report = _pid_reuse(tmp_path, seam)

    assert report["outcome"] == "not_running"
    assert report["signals"] == []
    assert report["decoy_received"] == []


@pytest.mark.needs_mountns
def test_kill_fallback_race_is_real(tmp_path: Path) -> None:
    # What the docs warn about: without a pidfd, a PID reused between the
    # final check and kill() receives the signal.
    report = _pid_reuse(tmp_path, "signal", "kill")

    assert report["decoy_received"] == ["SIGTERM"]


@pytest.mark.needs_mountns
def test_kill_fallback_refuses_late_reuse(tmp_path: Path) -> None:
    # Without a pidfd, the start-time rule still catches a PID reused more
    # than a few clock ticks after the file was written.
    report = _pid_reuse(tmp_path, "opened", "kill", "late")

    assert report["error"] == "IdentityMismatch"
    assert "the PID was reused" in report["reason"]
    assert report["decoy_received"] == []


# The kill() fallback and the psutil fallback.


def test_kill_never_gets_group_pids() -> None:
    for pid in (0, -1, -12345):
        with pytest.raises(ValueError, match="refusing to call kill"):
            _stop._kill(pid, signal.SIGTERM)


def test_kill_fallback_stops(
    piddir: Path, pidfile: Path, kill_fallback: None, sent: list[Any]
) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        result = stop(pidfile, schedule="TERM/0.2/KILL/5")

        assert wait_exit(child) == -signal.SIGKILL
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "stopped"
    kills = [call for call in real_signals(sent) if call[0] == "kill"]
    assert kills == [
        ("kill", child.pid, signal.SIGTERM),
        ("kill", child.pid, signal.SIGKILL),
    ]


@pytest.mark.needs_procfs
def test_psutil_fallback(
    piddir: Path, pidfile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_process, "procfs_available", lambda: False)
    with signal_child(piddir, "exit") as child, signal_child(piddir, "exit") as old:
        write_pid(pidfile, child.pid)
        result = stop(pidfile, schedule="TERM/5", expect_name=_comm(child.pid))
        wait_exit(child)

        write_pid(pidfile, old.pid, mtime_ns=start_ns(old.pid) - 5 * SECOND)
        with pytest.raises(IdentityMismatch):
            stop(pidfile)
        assert old.received() == []
    assert result.outcome == "stopped"


# signal_pidfile.


def test_signal_sends_once(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        pid = signal_pidfile(pidfile, signal.SIGHUP)
        deadline = time.monotonic() + WAIT_LIMIT
        while not child.received() and time.monotonic() < deadline:
            time.sleep(0.01)

        assert child.received() == ["SIGHUP"]
        assert child.alive()
    assert pid == child.pid
    assert pidfile.exists()


def test_signal_missing_file(pidfile: Path) -> None:
    with pytest.raises(PidfileMissing):
        signal_pidfile(pidfile, "TERM")


def test_signal_dead_process(pidfile: Path) -> None:
    pid = reaped_pid()
    write_pid(pidfile, pid)

    with pytest.raises(NotRunning) as caught:
        signal_pidfile(pidfile, "TERM")

    assert caught.value.reason == f"process {pid} is not running"
    assert caught.value.errno == errno.ESRCH
    assert pidfile.exists()


@pytest.mark.parametrize("sig", [-1, 4096])
def test_signal_number_out_of_range(pidfile: Path, sig: int) -> None:
    write_pid(pidfile, reaped_pid())

    with pytest.raises(ValueError, match="outside"):
        signal_pidfile(pidfile, sig)


# Untrusted files, with the writer played by unprivileged users.


@pytest.fixture(scope="module")
def two_users() -> Iterator[tuple[Any, ...]]:
    with unprivileged_users(2) as created:
        yield created


@pytest.fixture
def user_sandbox() -> Iterator[Path]:
    """A root-owned directory, mode 0755, that other users can search."""
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="pidsafe-stop-")))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)


def _user_dir(base: Path, user: Any) -> Path:
    """A directory owned by `user`, mode 0755: the user may write it."""
    path = base / f"dir-{user.name}"
    path.mkdir(mode=0o755)
    os.chown(path, user.uid, user.gid)
    return path


@pytest.mark.needs_users
@pytest.mark.needs_procfs
def test_untrusted_file_other_user_refused(
    two_users: tuple[Any, ...], user_sandbox: Path, sent: list[Any]
) -> None:
    writer, other = two_users
    directory = _user_dir(user_sandbox, writer)
    path = directory / "app.pid"
    python = interpreter_for(other.uid, other.gid)
    with signal_child(user_sandbox, "exit", user=other, interpreter=python) as child:
        run_as(writer, ["write", str(path), f"{child.pid}\n", "0644"])

        with pytest.raises(InsecurePidfile) as caught:
            stop(path)

        assert_untouched(child, sent)
    assert caught.value.path == str(path)
    assert caught.value.reason == (
        f"refusing to signal process {child.pid}: the file is untrusted "
        f"(directory {directory} is owned by uid {writer.uid}), and the process "
        f"belongs to uid {other.uid}, not to the file's owner uid {writer.uid}"
    )
    assert path.exists()


@pytest.mark.needs_users
@pytest.mark.needs_procfs
def test_untrusted_file_own_process_stopped(
    two_users: tuple[Any, ...], user_sandbox: Path
) -> None:
    writer, _ = two_users
    directory = _user_dir(user_sandbox, writer)
    path = directory / "app.pid"
    python = interpreter_for(writer.uid, writer.gid)
    with signal_child(user_sandbox, "exit", user=writer, interpreter=python) as child:
        run_as(writer, ["write", str(path), f"{child.pid}\n", "0644"])

        result = stop(path, schedule="TERM/5")

        assert wait_exit(child) == 0
        assert child.received() == ["SIGTERM"]
    assert result.outcome == "stopped"
    # The file is untrusted, so root leaves it to its owner.
    assert result.removed is False
    assert result.kept_reason is not None
    assert result.kept_reason.startswith("refusing to clean it: directory ")
    assert path.exists()


@pytest.mark.needs_users
@pytest.mark.needs_procfs
def test_unprivileged_caller_permission_error(
    two_users: tuple[Any, ...], user_sandbox: Path
) -> None:
    # A caller that may not signal the process gets a PidfilePermissionError
    # that names the signal, and the process gets nothing.
    caller, _ = two_users
    path = user_sandbox / "app.pid"
    with signal_child(user_sandbox, "exit") as child:
        write_pid(path, child.pid)

        results = run_as(caller, ["pidsafe", SOURCE_DIR, "stop", str(path)])

        time.sleep(0.05)
        assert child.alive()
        assert child.received() == []
    assert results[0]["error"] == "PidfilePermissionError"
    assert results[0]["message"] == (
        f"PID file {path}: permission denied sending SIGTERM to process {child.pid}"
    )
    assert path.exists()


def _unused_uid() -> int:
    for uid in range(61_000, 62_000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no unused uid in 61000..61999")


@pytest.mark.needs_mountns
@pytest.mark.needs_pidfd
def test_stop_refuses_hidden_process(user_sandbox: Path) -> None:
    # With /proc mounted hidepid=2, an unprivileged caller cannot read the
    # identity of another user's process, so it must not signal it.
    path = user_sandbox / "app.pid"
    uid = _unused_uid()
    with signal_child(user_sandbox, "exit") as child:
        write_pid(path, child.pid)
        probe = (
            "import os, pidsafe\n"
            f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
            "try:\n"
            f"    pidsafe.stop({str(path)!r})\n"
            "except pidsafe.PidfileError as exc:\n"
            "    print(type(exc).__name__, exc.reason)\n"
        )
        script = (
            "mount -t proc -o hidepid=2 proc /proc\n"
            f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n"
        )
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
            capture_output=True,
            text=True,
            timeout=3 * WAIT_LIMIT,
            check=False,
        )

        assert child.alive()
        assert child.received() == []
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"IdentityMismatch refusing to signal process {child.pid}: its /proc "
        "entry is hidden (the hidepid mount option), so its identity cannot "
        "be checked"
    )


# The stop and signal commands.


def run_cli(*args: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pidsafe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=3 * WAIT_LIMIT,
        check=False,
        **kwargs,
    )


def test_cli_stop_exit_0(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid)

        done = run_cli("stop", pidfile, "--retry", "TERM/5")

        wait_exit(child)
    assert done.returncode == 0
    assert done.stdout == (
        f"{pidfile}: stopped PID {child.pid} (sent SIGTERM); removed the PID file\n"
    )
    assert done.stderr == ""


def test_cli_stop_exit_1(pidfile: Path) -> None:
    done = run_cli("stop", pidfile)

    assert done.returncode == 1
    assert done.stdout == f"{pidfile}: nothing to stop: no PID file\n"


def test_cli_stop_exit_2(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        done = run_cli("stop", pidfile, "--retry", "TERM/0.2")

        assert child.alive()
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"pidsafe: PID file {pidfile}: PID {child.pid} is still running after "
        "the schedule TERM/0.2\n"
    )


@pytest.mark.needs_procfs
def test_cli_stop_exit_3_refused(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "exit") as child:
        write_pid(pidfile, child.pid, mtime_ns=start_ns(child.pid) - 5 * SECOND)

        done = run_cli("stop", pidfile)

        assert child.received() == []
    assert done.returncode == 3
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        f"pidsafe: PID file {pidfile}: refusing to signal process {child.pid}: "
    )


@pytest.mark.parametrize(
    ("contents", "args", "message"),
    [
        ("-1\n", [], "contains a sign '-' at offset 0"),
        ("1\n", [], "refusing to signal process 1, the init process"),
        ("", ["--retry", "TERM/x"], "invalid schedule 'TERM/x'"),
    ],
    ids=["negative", "pid1", "bad-schedule"],
)
def test_cli_stop_exit_3(
    pidfile: Path, contents: str, args: list[str], message: str
) -> None:
    pidfile.write_text(contents)

    done = run_cli("stop", pidfile, *args)

    assert done.returncode == 3
    assert message in done.stderr
    assert done.stderr.count("\n") == 1


def test_cli_stop_json(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        done = run_cli("stop", pidfile, "--retry", "TERM/0.2/KILL/5", "--json")

        wait_exit(child)
    data = json.loads(done.stdout)
    assert done.returncode == 0
    assert data["outcome"] == "stopped"
    assert data["exit_code"] == 0
    assert data["pid"] == child.pid
    assert [s["signal"] for s in data["signals"]] == ["SIGTERM", "SIGKILL"]
    assert data["removed"] is True
    assert set(data) == {
        "path",
        "pid",
        "outcome",
        "exit_code",
        "signals",
        "removed",
        "reason",
        "kept_reason",
        "removed_by_holder",
    }


def test_cli_signal_exit_codes(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        sent_hup = run_cli("signal", pidfile, "HUP")
        probed = run_cli("signal", pidfile, "0", "--json")
        refused = run_cli("signal", pidfile, "TERM", "--expect-uid", "12345")

        assert child.alive()
    pidfile.unlink()
    missing = run_cli("signal", pidfile, "TERM")

    assert sent_hup.returncode == 0
    assert sent_hup.stdout == f"{pidfile}: sent SIGHUP to PID {child.pid}\n"
    assert child.received() == ["SIGHUP"]
    assert probed.returncode == 0
    assert json.loads(probed.stdout)["signal"] == "signal 0"
    assert refused.returncode == 3
    assert "not as the expected uid 12345" in refused.stderr
    assert missing.returncode == 1
    assert missing.stderr == f"pidsafe: PID file {pidfile}: does not exist\n"


def test_cli_stop_silent_without_terminal(piddir: Path, pidfile: Path) -> None:
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)

        done = run_cli("stop", pidfile, "--retry", "TERM/0.5/KILL/5")

        wait_exit(child)
    assert done.returncode == 0
    assert done.stderr == ""
    assert "\r" not in done.stdout


def _read_terminal(fd: int, process: subprocess.Popen[str]) -> bytes:
    """Read from a pty master until the child exits, within WAIT_LIMIT."""
    output = b""
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError as exc:
                # Linux reports the closed slave side as EIO.
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output


def test_cli_stop_countdown_on_terminal(piddir: Path, pidfile: Path) -> None:
    master, slave = os.openpty()
    with signal_child(piddir, "ignore") as child:
        write_pid(pidfile, child.pid)
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "pidsafe", "stop", str(pidfile)),
                *("--retry", "TERM/1.5/KILL/5"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        try:
            terminal = _read_terminal(master, process).decode()
            output, _ = process.communicate(timeout=WAIT_LIMIT)
        finally:
            os.close(master)
            if process.poll() is None:
                process.kill()
                process.wait(WAIT_LIMIT)
        wait_exit(child)

    assert process.returncode == 0
    line = f"pidsafe: PID {child.pid}: SIGTERM, waiting for it to exit: "
    assert f"\r{line}2 s of 1.5 s left" in terminal
    assert f"\r{line}1 s of 1.5 s left" in terminal
    # The line is cleared before the result goes to standard output.
    assert terminal.endswith("\r")
    assert "\n" not in terminal
    assert output == (
        f"{pidfile}: stopped PID {child.pid} (sent SIGTERM, SIGKILL); "
        "removed the PID file\n"
    )


def test_cli_refuses_calling_shell(tmp_path: Path) -> None:
    # A file holding the shell's $$ must not make `pidsafe stop` kill the
    # shell that runs it.
    path = tmp_path / "shell.pid"
    script = (
        f'echo $$ > {path}; "{sys.executable}" -m pidsafe stop --retry TERM/1 '
        f'{path}; echo "exit $?"'
    )
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "exit 3"
    assert "parent of the calling process" in done.stderr
    assert path.exists()
