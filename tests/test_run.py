"""``pidsafe run``: supervise, exec and background modes, with real commands.

Every command line the tests start contains the test's private directory,
so teardown kills only processes whose command line still contains it,
never a process that reused a PID. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pidsafe
from child_process import WAIT_LIMIT
from pidsafe._lock import flock_held

HELPER = str(Path(__file__).with_name("run_helper.py"))


# --- helpers -------------------------------------------------------------


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` every 10 ms; fail the test after WAIT_LIMIT seconds."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_LIMIT} s waiting for {what}")
        time.sleep(0.01)


def pidsafe_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "pidsafe", *map(str, args)]


def helper_argv(mode: str, *args: str | Path) -> list[str]:
    return [sys.executable, HELPER, mode, *map(str, args)]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``pidsafe ARGS`` to completion, within WAIT_LIMIT seconds."""
    return subprocess.run(
        pidsafe_argv(*args),
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )


def read_report(path: Path) -> dict[str, Any]:
    """Wait for a helper's ready report and return it."""
    wait_for(path.exists, f"the helper to write {path.name}")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def file_pid(path: Path) -> int:
    return int(path.read_bytes().decode())


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stream:
        data = stream.read()
    # Field 4 (ppid) is the second field after the ")" that ends field 2.
    return int(data.rpartition(b")")[2].split()[1])


def snapshot(path: Path) -> tuple[bytes, int, int]:
    """Return a file's bytes, inode and mtime, to show it did not change."""
    st = os.stat(path, follow_symlinks=False)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def is_locked(path: Path) -> bool | None:
    return flock_held(os.stat(path))


class Processes:
    """Processes started by one test, killed by PID when the test ends.

    `tag` is a string in the command line of every process the test starts
    (its private directory). A PID is killed only while its command line
    still contains the tag.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag.encode()
        self.popens: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def start(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.popens.append(proc)
        return proc

    def forget_exited(self, pid: int) -> None:
        wait_for(lambda: not pidsafe.is_alive(pid), f"process {pid} to exit")

    def cleanup(self) -> None:
        for pid in self.pids:
            if self._is_ours(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self.popens:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=WAIT_LIMIT)

    def _is_ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as stream:
                return self.tag in stream.read()
        except OSError:
            return False


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(str(tmp_path))
    yield started
    started.cleanup()


@pytest.fixture
def pidpath(piddir: Path) -> Path:
    return piddir / "app.pid"


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for `proc`; return its exit status and its stderr."""
    _, err = proc.communicate(timeout=WAIT_LIMIT)
    return proc.returncode, err


def start_supervised(
    processes: Processes, pidpath: Path, ready: Path, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    """Start ``pidsafe run`` on a waiting helper; return it and the child PID.

    Returns once the helper runs and the file names it.
    """
    supervisor = processes.start(
        pidsafe_argv(
            "run", "--pidfile", pidpath, *extra, "--", *helper_argv("wait", ready)
        )
    )
    child = read_report(ready)["pid"]
    processes.pids.append(child)
    return supervisor, child


# --- supervise mode ------------------------------------------------------


@pytest.mark.needs_procfs
def test_supervise_names_child(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    ready = tmp_path / "ready"
    supervisor, child = start_supervised(processes, pidpath, ready)

    assert child != supervisor.pid
    assert parent_of(child) == supervisor.pid
    assert file_pid(pidpath) == child
    assert is_locked(pidpath) is True
    found = pidsafe.status(pidpath)
    assert found.state == "running"
    assert found.pid == child

    supervisor.send_signal(signal.SIGTERM)
    code, err = finish(supervisor)
    assert code == 128 + signal.SIGTERM, err
    assert err == ""
    assert not pidpath.exists()
    assert not pidsafe.is_alive(child)


@pytest.mark.needs_procfs
def test_child_inherits_no_lock(pidpath: Path, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    result = run_cli("run", "--pidfile", pidpath, "--", *helper_argv("describe", ready))

    assert result.returncode == 0, result.stderr
    report = read_report(ready)
    assert str(pidpath) not in report["fds"].values()
    assert not pidpath.exists()


def signal_masks(output: str) -> dict[str, int]:
    """Parse the SigBlk and SigIgn lines of a /proc/PID/status."""
    masks = {}
    for line in output.splitlines():
        key, _, value = line.partition(":")
        masks[key] = int(value.strip(), 16)
    return masks


def bit(signum: int) -> int:
    return 1 << (signum - 1)


# grep, unlike a Python helper, keeps the signal state it was started with.
SHOW_SIGNAL_MASKS = ("grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status")


@pytest.mark.needs_procfs
def test_child_gets_default_signals(pidpath: Path) -> None:
    result = run_cli("run", "--pidfile", pidpath, "--", *SHOW_SIGNAL_MASKS)

    assert result.returncode == 0, result.stderr
    masks = signal_masks(result.stdout)
    assert masks["SigBlk"] == 0
    assert not masks["SigIgn"] & bit(signal.SIGPIPE)
    assert not masks["SigIgn"] & bit(signal.SIGHUP)


@pytest.mark.needs_procfs
def test_exec_mode_gets_default_signals(pidpath: Path) -> None:
    result = run_cli(
        "run", "--pidfile", pidpath, "--mode", "exec", "--", *SHOW_SIGNAL_MASKS
    )

    assert result.returncode == 0, result.stderr
    masks = signal_masks(result.stdout)
    assert masks["SigBlk"] == 0
    assert not masks["SigIgn"] & bit(signal.SIGPIPE)


@pytest.mark.needs_procfs
def test_signals_reach_child(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    ready = tmp_path / "ready"
    log = tmp_path / "signals"
    supervisor = processes.start(
        pidsafe_argv(
            "run", "--pidfile", pidpath, "--", *helper_argv("record", ready, log)
        )
    )
    child = read_report(ready)["pid"]
    processes.pids.append(child)
    sent = [signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2]

    def recorded() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    for number, signum in enumerate(sent, 1):
        supervisor.send_signal(signum)
        wait_for(
            lambda expected=number: recorded() == expected,
            f"the child to record {signum.name}",
        )
    supervisor.send_signal(signal.SIGTERM)
    code, err = finish(supervisor)

    assert code == 0, err
    assert log.read_text().splitlines() == [s.name for s in [*sent, signal.SIGTERM]]
    assert not pidpath.exists()


@pytest.mark.needs_procfs
def test_ignored_signal_stays_ignored(pidpath: Path) -> None:
    # Start pidsafe the way nohup does: with SIGHUP ignored.
    launch = (
        "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
        "os.execv(sys.executable, sys.argv[1:])"
    )
    command = pidsafe_argv("run", "--pidfile", pidpath, "--", *SHOW_SIGNAL_MASKS)
    result = subprocess.run(
        [sys.executable, "-c", launch, *command],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert signal_masks(result.stdout)["SigIgn"] & bit(signal.SIGHUP)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -KILL $$", 128 + signal.SIGKILL),
        ("kill -TERM $$", 128 + signal.SIGTERM),
    ],
)
def test_exit_status_passes_through(pidpath: Path, script: str, expected: int) -> None:
    result = run_cli("run", "--pidfile", pidpath, "--", "sh", "-c", script)

    assert result.returncode == expected
    assert result.stderr == ""
    assert not pidpath.exists()


@pytest.mark.needs_procfs
def test_supervisor_sigkill_then_takeover(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    supervisor, orphan = start_supervised(processes, pidpath, tmp_path / "ready")
    supervisor.kill()
    supervisor.wait(timeout=WAIT_LIMIT)

    # The orphan still runs, unlocked, and the start-time rule names it.
    assert pidsafe.is_alive(orphan)
    assert file_pid(pidpath) == orphan
    assert is_locked(pidpath) is False
    status = run_cli("status", pidpath)
    assert status.returncode == 0
    assert f"running, PID {orphan}" in status.stdout
    before = snapshot(pidpath)
    second = run_cli("run", "--pidfile", pidpath, "--", "true")
    assert second.returncode == 3
    assert f"process {orphan} is running" in second.stderr
    assert snapshot(pidpath) == before

    # Once the orphan is gone, the next run takes the file over.
    os.kill(orphan, signal.SIGKILL)
    processes.forget_exited(orphan)
    assert run_cli("status", pidpath).returncode == 1
    ready = tmp_path / "ready-next"
    successor, child = start_supervised(processes, pidpath, ready)
    assert file_pid(pidpath) == child
    assert is_locked(pidpath) is True

    successor.send_signal(signal.SIGTERM)
    code, err = finish(successor)
    assert code == 128 + signal.SIGTERM, err
    assert not pidpath.exists()


@pytest.mark.needs_procfs
def test_second_run_changes_nothing(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    supervisor, child = start_supervised(processes, pidpath, tmp_path / "ready")
    before = snapshot(pidpath)
    marker = tmp_path / "second-ran"

    result = run_cli("run", "--pidfile", pidpath, "--", "touch", marker)

    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {pidpath}: is locked by process {child}, so another "
        "instance is running; stop it before starting a new one"
    ]
    assert snapshot(pidpath) == before
    assert not marker.exists()
    assert supervisor.poll() is None


# --- exec mode -----------------------------------------------------------


@pytest.mark.needs_procfs
def test_exec_mode_keeps_lock(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    ready = tmp_path / "ready"
    command = processes.start(
        pidsafe_argv(
            "run",
            "--pidfile",
            pidpath,
            "--mode",
            "exec",
            "--",
            *helper_argv("wait", ready),
        )
    )
    report = read_report(ready)

    assert report["pid"] == command.pid
    assert file_pid(pidpath) == command.pid
    assert is_locked(pidpath) is True
    status = run_cli("status", pidpath)
    assert status.returncode == 0
    assert status.stdout == f"{pidpath}: running, PID {command.pid}\n"
    before = snapshot(pidpath)
    second = run_cli("run", "--pidfile", pidpath, "--", "true")
    assert second.returncode == 3
    assert f"locked by process {command.pid}" in second.stderr
    assert snapshot(pidpath) == before

    # The exec'd command does not remove the file, which is stale once it
    # exits and is taken over by the next run.
    command.send_signal(signal.SIGTERM)
    code, _ = finish(command)
    assert code == -signal.SIGTERM
    assert is_locked(pidpath) is False
    assert run_cli("status", pidpath).returncode == 1
    assert run_cli("run", "--pidfile", pidpath, "--", "true").returncode == 0
    assert not pidpath.exists()


# --- commands that cannot be executed --------------------------------------


@pytest.mark.parametrize("mode", ["supervise", "exec"])
@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
def test_missing_command_exits_127(
    pidpath: Path, tmp_path: Path, mode: str, background: bool
) -> None:
    missing = tmp_path / "no-such-command"
    options = ["--background"] if background else []

    result = run_cli(
        "run", "--pidfile", pidpath, "--mode", mode, *options, "--", missing
    )

    assert result.returncode == 127
    assert result.stderr.splitlines() == [
        f"pidsafe: cannot execute {missing}: No such file or directory"
    ]
    assert not pidpath.exists()


@pytest.mark.parametrize("mode", ["supervise", "exec"])
def test_not_executable_exits_126(pidpath: Path, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)

    result = run_cli("run", "--pidfile", pidpath, "--mode", mode, "--", script)

    assert result.returncode == 126
    assert result.stderr.splitlines() == [
        f"pidsafe: cannot execute {script}: Permission denied"
    ]
    assert not pidpath.exists()


def test_command_found_on_path(pidpath: Path) -> None:
    result = run_cli("run", "--pidfile", pidpath, "--", "sh", "-c", "exit 3")

    assert result.returncode == 3
    assert result.stderr == ""


# --- background mode -----------------------------------------------------


def start_background(
    processes: Processes, pidpath: Path, ready: Path, *extra: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``pidsafe run --background`` on a waiting helper until it returns.

    Returns the launcher's result and the PID in the file at the moment the
    launcher returned (or -1 when there was no file).
    """
    result = subprocess.run(
        pidsafe_argv(
            "run",
            "--pidfile",
            pidpath,
            "--background",
            *extra,
            "--",
            *helper_argv("wait", ready),
        ),
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )
    # Check at once, before any wait: the launcher promises the file.
    try:
        named = file_pid(pidpath)
    except FileNotFoundError:
        named = -1
    if named > 0:
        processes.pids.append(named)
        if pidsafe.is_alive(named):
            processes.pids.append(parent_of(named))
    return result, named


@pytest.mark.needs_procfs
def test_background_returns_after_file(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    ready = tmp_path / "ready"
    result, named = start_background(processes, pidpath, ready)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert named > 0
    assert pidsafe.is_alive(named)
    assert is_locked(pidpath) is True
    report = read_report(ready)
    assert report["pid"] == named
    supervisor = report["ppid"]
    assert pidsafe.is_alive(supervisor)
    # Detached: a new session, which the supervisor does not lead.
    assert os.getsid(supervisor) != os.getsid(0)
    assert os.getsid(supervisor) != supervisor

    os.kill(supervisor, signal.SIGTERM)
    wait_for(lambda: not pidpath.exists(), "the supervisor to remove the file")
    processes.forget_exited(named)


@pytest.mark.needs_procfs
def test_background_exec_names_command(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    ready = tmp_path / "ready"
    result, named = start_background(processes, pidpath, ready, "--mode", "exec")

    assert result.returncode == 0, result.stderr
    assert named > 0
    assert pidsafe.is_alive(named)
    assert is_locked(pidpath) is True
    report = read_report(ready)
    assert report["pid"] == named
    assert os.getsid(named) != os.getsid(0)

    os.kill(named, signal.SIGTERM)
    processes.forget_exited(named)
    wait_for(lambda: is_locked(pidpath) is False, "the lock to go with the command")


@pytest.mark.needs_procfs
def test_background_held_names_holder(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    _, child = start_supervised(processes, pidpath, tmp_path / "ready")
    before = snapshot(pidpath)

    result, named = start_background(processes, pidpath, tmp_path / "ready-second")

    assert result.returncode == 3
    assert named == child
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {pidpath}: is locked by process {child}, so another "
        "instance is running; stop it before starting a new one"
    ]
    assert snapshot(pidpath) == before
    assert not (tmp_path / "ready-second").exists()


@pytest.mark.needs_procfs
def test_background_log_file(
    pidpath: Path, tmp_path: Path, processes: Processes
) -> None:
    log = tmp_path / "out.log"
    result = run_cli(
        "run",
        "--pidfile",
        pidpath,
        "--background",
        "--log",
        log,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2",
    )

    assert result.returncode == 0, result.stderr
    wait_for(lambda: not pidpath.exists(), "the command to finish")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert sorted(log.read_text().splitlines()) == ["err", "out"]


def test_log_symlink_rejected(pidpath: Path, tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    target = tmp_path / "target"
    target.write_text("")
    log.symlink_to(target)
    marker = tmp_path / "ran"

    result = run_cli(
        "run", "--pidfile", pidpath, "--background", "--log", log, "--", "touch", marker
    )

    assert result.returncode == 125
    assert result.stderr.splitlines() == [
        f"pidsafe: log file {log}: is a symlink, which is never followed"
    ]
    assert not pidpath.exists()
    assert not marker.exists()
    assert target.read_text() == ""


def test_log_fifo_rejected(pidpath: Path, tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    os.mkfifo(log)

    result = run_cli(
        "run", "--pidfile", pidpath, "--background", "--log", log, "--", "true"
    )

    assert result.returncode == 125
    assert result.stderr.splitlines() == [
        f"pidsafe: log file {log}: is a FIFO or socket, not a regular file"
    ]
    assert not pidpath.exists()


def test_log_in_unsafe_directory(pidpath: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    log = shared / "out.log"

    result = run_cli(
        "run", "--pidfile", pidpath, "--background", "--log", log, "--", "true"
    )

    assert result.returncode == 125
    assert result.stderr.splitlines() == [
        f"pidsafe: log file {log}: unsafe to write: directory {shared} is "
        "writable by group and others"
    ]
    assert not log.exists()
    assert not pidpath.exists()


def test_log_needs_background(pidpath: Path, tmp_path: Path) -> None:
    result = run_cli(
        "run", "--pidfile", pidpath, "--log", tmp_path / "log", "--", "true"
    )

    assert result.returncode == 2
    assert "--log needs --background" in result.stderr
    assert not pidpath.exists()


def test_unsafe_pidfile_exits_125(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    marker = tmp_path / "ran"

    result = run_cli("run", "--pidfile", shared / "app.pid", "--", "touch", marker)

    assert result.returncode == 125
    assert result.stderr.startswith(f"pidsafe: PID file {shared}/app.pid: ")
    assert len(result.stderr.splitlines()) == 1
    assert not marker.exists()


# --- the supervisor's own failures -----------------------------------------

# Runs the pidsafe command with PidFile._replace_pid failing, as it would on
# a full file system after the child is forked.
FAIL_REPLACE = """
import sys
import pidsafe
from pidsafe import _hold, cli

def fail(self, pid):
    raise pidsafe.PidfileError(self.path, f"cannot write PID {pid}: disk full")

_hold.PidFile._replace_pid = fail
sys.exit(cli.main(sys.argv[1:]))
"""


def test_unrecorded_child_never_runs(pidpath: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    command = ["run", "--pidfile", str(pidpath), "--", "touch", str(marker)]
    result = subprocess.run(
        [sys.executable, "-c", FAIL_REPLACE, *command],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )

    assert result.returncode == 125
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pidsafe: PID file {pidpath}: cannot write PID ")
    assert not marker.exists()
    assert not pidpath.exists()


# Calls run() in the process and prints the signal state afterwards.
RUN_IN_PROCESS = """
import signal, sys
from pidsafe._run import RunRequest, run
code = run(RunRequest(pidfile=sys.argv[1], command=["true"]))
print(code, signal.getsignal(signal.SIGINT) is signal.default_int_handler,
      signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
      sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
"""


def test_run_restores_signal_state(pidpath: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", RUN_IN_PROCESS, str(pidpath)],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "True", "True", "[]"]
    assert not pidpath.exists()
