"""Tests for holding a PID file: PidFile, stale takeover, identity, races.

Races run in real processes (tests/hold_worker.py) or, where one exact
interleaving matters, in threads paused through `pidsafe._hold.step_hook`.
Every wait is bounded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pidsafe
from pidsafe import _hold
from pidsafe._lock import flock_held
from pidsafe._process import start_time

WORKER = str(Path(__file__).with_name("hold_worker.py"))

# The stress test's size; CI runs the defaults.
STRESS_WORKERS = int(os.environ.get("PIDSAFE_STRESS_WORKERS", "16"))
STRESS_HOLDS = int(os.environ.get("PIDSAFE_STRESS_HOLDS", "200"))

IS_ROOT = os.geteuid() == 0


# --- helpers -------------------------------------------------------------


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` every 10 ms; fail the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.01)


class Children:
    """Processes started by one test, killed by PID when the test ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []  # grandchildren that are not Popen objects

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, WORKER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def spawn(self, argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, text=True)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        for pid in self.pids:
            # Kill a grandchild only while its PID still runs our worker,
            # never a process that reused the PID after it exited.
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as stream:
                    command = stream.read()
            except OSError:
                continue
            if WORKER.encode() in command:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def children() -> Iterator[Children]:
    started = Children()
    yield started
    started.cleanup()


def finish(proc: subprocess.Popen[str], seconds: float = 30) -> tuple[int, str]:
    """Wait for `proc`; return its exit status and output, stderr appended."""
    out, err = proc.communicate(timeout=seconds)
    return proc.returncode, out + err


def run_worker(*args: str, seconds: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, WORKER, *args],
        capture_output=True,
        text=True,
        timeout=seconds,
        check=False,
    )


def start_holder(children: Children, path: Path, tmp_path: Path) -> int:
    """Start a process that holds `path`; return its PID once it holds it."""
    ready = tmp_path / "holder-ready"
    proc = children.start("hold", str(path), str(ready), "60")
    wait_until(ready.exists, 20, "the holder to acquire the file")
    return proc.pid


def dead_pid() -> int:
    """Return the PID of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    """Return a file's bytes, inode, mtime and mode, to prove it unchanged."""
    st = os.stat(path, follow_symlinks=False)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, st.st_mode


def write_pidfile(path: Path, pid: int, mtime_ns: int | None = None) -> None:
    path.write_text(f"{pid}\n")
    path.chmod(0o644)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def lock_file(path: Path) -> int:
    """Lock `path` through a new fd and return the fd (caller closes it)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def boot_ns() -> int:
    started = start_time(os.getpid())
    assert started is not None
    return started.boot_ns


@pytest.fixture
def sleeper(children: Children) -> tuple[int, int]:
    """A live process: its PID and its start time in ns since the epoch."""
    proc = children.spawn(["sleep", "60"])
    started = start_time(proc.pid)
    assert started is not None
    return proc.pid, started.process_ns


@pytest.fixture
def pidpath(piddir: Path) -> Path:
    return piddir / "app.pid"


# --- holding and releasing -------------------------------------------------


def test_acquire_writes_pid(pidpath: Path) -> None:
    pidfile = pidsafe.PidFile(pidpath)
    pidfile.acquire()
    try:
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()
        assert pidfile.pid == os.getpid()
        held = os.fstat(pidfile.fileno())
        assert held.st_ino == pidpath.stat().st_ino
        assert flock_held(held) is True
    finally:
        pidfile.release()
    assert not pidpath.exists()
    assert pidfile.pid is None


def test_release_when_not_held_is_noop(pidpath: Path) -> None:
    pidfile = pidsafe.PidFile(pidpath)
    pidfile.release()
    with pytest.raises(ValueError, match="not held"):
        pidfile.fileno()


def test_context_manager_and_decorator(pidpath: Path) -> None:
    with pidsafe.PidFile(pidpath) as pidfile:
        assert pidfile.pid == os.getpid()
        assert pidpath.exists()
    assert not pidpath.exists()

    @pidsafe.PidFile(pidpath)
    def serve() -> bytes:
        return pidpath.read_bytes()

    assert serve() == b"%d\n" % os.getpid()
    assert not pidpath.exists()
    assert serve() == b"%d\n" % os.getpid()


def test_acquire_twice_same_object(pidpath: Path) -> None:
    with (
        pidsafe.PidFile(pidpath) as pidfile,
        pytest.raises(RuntimeError, match="already held by this object"),
    ):
        pidfile.acquire()


def test_second_object_same_process(pidpath: Path) -> None:
    with pidsafe.PidFile(pidpath):
        before = snapshot(pidpath)
        with pytest.raises(pidsafe.AlreadyRunning) as caught:
            pidsafe.PidFile(pidpath).acquire()
        assert caught.value.pid == os.getpid()
        assert snapshot(pidpath) == before


def test_mode_rejects_writable_by_others(pidpath: Path) -> None:
    with pytest.raises(ValueError, match="writable by group or others"):
        pidsafe.PidFile(pidpath, mode=0o664)
    with pytest.raises(ValueError, match="0o4644"):
        pidsafe.PidFile(pidpath, mode=0o4644)


def test_mode_of_new_file(pidpath: Path) -> None:
    old_umask = os.umask(0)
    try:
        with pidsafe.PidFile(pidpath, mode=0o600):
            assert stat.S_IMODE(pidpath.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_path_type_checked(pidpath: Path) -> None:
    with pytest.raises(TypeError, match="bytes"):
        pidsafe.PidFile(os.fsencode(pidpath))  # type: ignore[arg-type]  # the test passes a wrong type on purpose


def test_repr_shows_state(pidpath: Path) -> None:
    pidfile = pidsafe.PidFile(pidpath)
    assert "not held" in repr(pidfile)
    with pidfile:
        assert f"held by PID {os.getpid()}" in repr(pidfile)


def test_exit_releases_unreleased_hold(pidpath: Path) -> None:
    code = f"import pidsafe; pidsafe.PidFile({str(pidpath)!r}).acquire()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert not pidpath.exists()


# --- a second start ----------------------------------------------------------


def test_second_start_names_holder(
    pidpath: Path, tmp_path: Path, children: Children
) -> None:
    holder = start_holder(children, pidpath, tmp_path)
    before = snapshot(pidpath)

    with pytest.raises(pidsafe.AlreadyRunning) as caught:
        pidsafe.PidFile(pidpath).acquire()

    assert caught.value.pid == holder
    assert f"is locked by process {holder}" in str(caught.value)
    assert str(pidpath) in str(caught.value)
    assert caught.value.errno == errno.EAGAIN
    assert snapshot(pidpath) == before


def test_failed_start_keeps_holder_file(
    pidpath: Path, tmp_path: Path, children: Children
) -> None:
    holder = start_holder(children, pidpath, tmp_path)
    before = snapshot(pidpath)

    result = run_worker("try-start", str(pidpath))

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] == "AlreadyRunning"
    assert report["pid"] == holder
    assert snapshot(pidpath) == before
    assert pidsafe.status(pidpath).state == "running"
    assert flock_held(os.stat(pidpath)) is True


# --- many processes ------------------------------------------------------------


def check_invariant_log(lines: list[str]) -> int:
    """Fail unless enter/exit lines never overlap; return the hold count."""
    holder = None
    holds = 0
    for number, line in enumerate(lines, 1):
        kind, pid = line.split(" ", 1)
        if kind == "enter":
            assert holder is None, f"line {number}: {pid} entered while {holder} held"
            holder = pid
            holds += 1
        elif kind == "exit":
            assert holder == pid, f"line {number}: {pid} exited, holder {holder}"
            holder = None
        else:
            pytest.fail(f"line {number}: {line}")
    assert holder is None
    return holds


def test_concurrent_holders_never_overlap(
    pidpath: Path, tmp_path: Path, children: Children
) -> None:
    log = tmp_path / "holders.log"
    log.touch()
    procs = [
        children.start("stress", str(pidpath), str(log), str(STRESS_HOLDS), "50")
        for _ in range(STRESS_WORKERS)
    ]

    for proc in procs:
        code, output = finish(proc, seconds=60)
        assert code == 0, output

    holds = check_invariant_log(log.read_text().splitlines())
    assert holds == STRESS_WORKERS * STRESS_HOLDS
    assert not pidpath.exists()


def test_status_polling_never_fails_acquire(
    pidpath: Path, tmp_path: Path, children: Children
) -> None:
    stop = tmp_path / "stop"
    pollers = [
        children.start("poll-status", str(pidpath), str(stop), "30") for _ in range(8)
    ]
    wait_until(lambda: pidsafe.status(pidpath).state == "absent", 5, "a quiet start")

    pidfile = pidsafe.PidFile(pidpath)
    try:
        for _ in range(500):
            pidfile.acquire()
            pidfile.release()
    finally:
        stop.touch()

    for proc in pollers:
        code, output = finish(proc)
        assert code == 0, output
        states = json.loads(output)
        assert "refused" not in states, states
        assert "unknown" not in states, states


def test_release_between_open_and_lock(pidpath: Path) -> None:
    holder = pidsafe.PidFile(pidpath)
    holder.acquire()
    waiter = pidsafe.PidFile(pidpath)
    paused = threading.Event()
    resume = threading.Event()
    steps: list[str] = []
    errors: list[BaseException] = []

    def hook(step: str) -> None:
        if threading.current_thread().name != "waiter":
            return
        steps.append(step)
        if step == "opened" and not paused.is_set():
            paused.set()
            assert resume.wait(10)

    def acquire() -> None:
        try:
            waiter.acquire()
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    _hold.step_hook = hook
    try:
        thread = threading.Thread(target=acquire, name="waiter")
        thread.start()
        assert paused.wait(10)
        holder.release()  # unlinks the name while the waiter has it open
        resume.set()
        thread.join(10)
    finally:
        _hold.step_hook = None
        resume.set()

    assert not thread.is_alive()
    assert errors == []
    try:
        held = os.fstat(waiter.fileno())
        assert held.st_nlink == 1
        assert held.st_ino == pidpath.stat().st_ino
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()
        # The waiter locked the removed inode first, saw that the name no
        # longer referred to it, and started over with a new file.
        assert steps[:2] == ["opened", "locked"]
        assert steps.count("opened") == 2
    finally:
        waiter.release()


# --- crashes -----------------------------------------------------------------


@pytest.mark.parametrize("step", ["opened", "locked", "truncated", "written"])
def test_killed_starter_leaves_takeover(pidpath: Path, step: str) -> None:
    result = run_worker("kill-at", str(pidpath), step)

    assert result.returncode == -signal.SIGKILL, result.stderr
    assert pidpath.exists()
    assert pidsafe.status(pidpath).state == "stale"
    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


@pytest.mark.parametrize("step", ["opened", "locked", "truncated"])
def test_killed_starter_over_stale_file(pidpath: Path, step: str) -> None:
    write_pidfile(pidpath, dead_pid())

    result = run_worker("kill-at", str(pidpath), step)

    assert result.returncode == -signal.SIGKILL, result.stderr
    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


# --- replacing the PID in a held file -------------------------------------


def test_replace_pid_keeps_lock_and_inode(
    pidpath: Path, sleeper: tuple[int, int]
) -> None:
    child, _ = sleeper
    with pidsafe.PidFile(pidpath) as pidfile:
        before = os.stat(pidpath)
        pidfile._replace_pid(child)

        after = os.stat(pidpath)
        assert pidpath.read_bytes() == b"%d\n" % child
        assert pidfile.pid == child
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        assert after.st_mtime_ns >= before.st_mtime_ns
        assert flock_held(after) is True
        assert f"naming PID {child}" in repr(pidfile)
        with pytest.raises(pidsafe.AlreadyRunning) as caught:
            pidsafe.PidFile(pidpath).acquire()
        assert caught.value.pid == child
    assert not pidpath.exists()  # the acquiring process still removes it


def test_replace_pid_when_not_held(pidpath: Path) -> None:
    pidfile = pidsafe.PidFile(pidpath)
    with pytest.raises(ValueError, match="not held"):
        pidfile._replace_pid(os.getpid())
    assert not pidpath.exists()


@pytest.mark.parametrize("pid", [0, -1])
def test_replace_pid_rejects_invalid_pid(pidpath: Path, pid: int) -> None:
    with pidsafe.PidFile(pidpath) as pidfile:
        with pytest.raises(ValueError, match="outside the range"):
            pidfile._replace_pid(pid)
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


def test_replace_pid_write_failure(
    pidpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pidsafe.PidFile(pidpath) as pidfile:

        def fail(fd: int, data: bytes, offset: int) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(_hold.os, "pwrite", fail)
        with pytest.raises(pidsafe.PidfileError, match="cannot write PID 1") as caught:
            pidfile._replace_pid(1)
        monkeypatch.undo()

        assert caught.value.errno == errno.ENOSPC
        assert pidfile.pid == os.getpid()
        assert flock_held(os.stat(pidpath)) is True
    assert not pidpath.exists()


# --- fork --------------------------------------------------------------------


def test_forked_child_keeps_parent_file(pidpath: Path) -> None:
    result = run_worker("fork-and-release", str(pidpath))

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["child_status"] == 0
    assert report["problem"] is None
    assert report["locked"] is True
    assert not pidpath.exists()  # removed by the parent on exit


@pytest.mark.needs_procfs
def test_forked_child_drops_lock(
    pidpath: Path, tmp_path: Path, children: Children
) -> None:
    child_pid_file = tmp_path / "child.pid"
    result = run_worker("fork-and-die", str(pidpath), str(child_pid_file), "60")
    assert result.returncode == -signal.SIGKILL, result.stderr
    child = int(child_pid_file.read_text())
    children.pids.append(child)
    assert pidsafe.is_alive(child)

    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


# --- stale files and identity ---------------------------------------------------


def test_takeover_dead_pid(pidpath: Path) -> None:
    write_pidfile(pidpath, dead_pid())
    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


def test_takeover_own_pid(pidpath: Path) -> None:
    # A container that restarts runs its service as PID 1 again and finds
    # "1" in the file on its volume.
    write_pidfile(pidpath, os.getpid())
    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


@pytest.mark.parametrize("contents", [b"", b"\0\0\0\0", b"-1\n", b"12 34\n"])
def test_takeover_empty_or_malformed(pidpath: Path, contents: bytes) -> None:
    pidpath.write_bytes(contents)
    pidpath.chmod(0o644)
    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


@pytest.mark.needs_procfs
def test_takeover_recycled_pid(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    written_ns = started_ns - 5_000_000_000
    assert written_ns > boot_ns() + 1_000_000_000, "booted less than 6 s ago"
    write_pidfile(pidpath, pid, written_ns)

    found = pidsafe.status(pidpath)
    assert found.state == "stale"
    assert found.reason == f"process {pid} started after the file was written"

    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


@pytest.mark.needs_procfs
def test_live_writer_without_lock(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, started_ns = sleeper
    write_pidfile(pidpath, pid, started_ns + 1_000_000_000)
    before = snapshot(pidpath)

    found = pidsafe.status(pidpath)
    assert found.state == "running"
    assert found.pid == pid

    with pytest.raises(pidsafe.AlreadyRunning) as caught:
        pidsafe.PidFile(pidpath).acquire()
    assert caught.value.pid == pid
    assert f"process {pid} is running" in str(caught.value)
    assert "does not lock" in str(caught.value)
    assert snapshot(pidpath) == before


@pytest.mark.needs_procfs
def test_takeover_file_before_boot(pidpath: Path, sleeper: tuple[int, int]) -> None:
    pid, _ = sleeper
    write_pidfile(pidpath, pid, boot_ns() - 60_000_000_000)

    found = pidsafe.status(pidpath)
    assert found.state == "stale"
    assert found.reason == "the file was written before the last boot"

    with pidsafe.PidFile(pidpath):
        assert pidpath.read_bytes() == b"%d\n" % os.getpid()


# --- contention with a lock that is about to go away ------------------------------


def test_waits_for_cleaner_of_dead_holder(pidpath: Path) -> None:
    # A cleaner locks a dead holder's file for a moment before removing it;
    # a starter that meets that lock waits instead of failing.
    write_pidfile(pidpath, dead_pid())
    fd = lock_file(pidpath)

    def clean() -> None:
        time.sleep(0.2)
        pidpath.unlink()
        os.close(fd)

    cleaner = threading.Timer(0, clean)
    cleaner.start()
    try:
        with pidsafe.PidFile(pidpath):
            assert pidpath.read_bytes() == b"%d\n" % os.getpid()
    finally:
        cleaner.join(10)


def test_lock_held_for_dead_pid_times_out(pidpath: Path) -> None:
    pid = dead_pid()
    write_pidfile(pidpath, pid)
    before = snapshot(pidpath)
    fd = lock_file(pidpath)
    try:
        started = time.monotonic()
        with pytest.raises(pidsafe.AlreadyRunning) as caught:
            pidsafe.PidFile(pidpath).acquire()
        waited = time.monotonic() - started
    finally:
        os.close(fd)
    assert caught.value.pid is None
    assert f"names process {pid}, which is not running" in str(caught.value)
    assert _hold.CONTENTION_WAIT <= waited < _hold.CONTENTION_WAIT + 5
    assert snapshot(pidpath) == before


def test_empty_locked_file_reports_unknown_pid(pidpath: Path) -> None:
    pidpath.touch(mode=0o644)
    fd = lock_file(pidpath)
    try:
        with pytest.raises(pidsafe.AlreadyRunning) as caught:
            pidsafe.PidFile(pidpath).acquire()
    finally:
        os.close(fd)
    assert caught.value.pid is None
    assert "has not written its PID" in str(caught.value)
    assert pidpath.read_bytes() == b""


def test_waits_for_starter_to_write(pidpath: Path) -> None:
    pidpath.touch(mode=0o644)
    fd = lock_file(pidpath)
    writer = threading.Timer(0.1, pidpath.write_text, (f"{os.getpid()}\n",))
    writer.start()
    try:
        with pytest.raises(pidsafe.AlreadyRunning) as caught:
            pidsafe.PidFile(pidpath).acquire()
    finally:
        writer.join(10)
        os.close(fd)
    assert caught.value.pid == os.getpid()


# --- rejected files and locations ----------------------------------------------


def test_untrusted_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.PidFile(shared / "app.pid").acquire()
    assert "writable by group and others" in str(caught.value)
    assert list(shared.iterdir()) == []


@pytest.mark.needs_root
def test_directory_owned_by_other_user(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    os.chown(other, unused_uid(), -1)
    with pytest.raises(pidsafe.InsecurePidfile, match="owned by uid"):
        pidsafe.PidFile(other / "app.pid").acquire()
    assert list(other.iterdir()) == []


@pytest.mark.needs_root
def test_file_owned_by_other_user(pidpath: Path) -> None:
    write_pidfile(pidpath, dead_pid())
    os.chown(pidpath, unused_uid(), -1)
    before = snapshot(pidpath)
    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.PidFile(pidpath).acquire()
    assert "refusing to hold another user's file" in str(caught.value)
    assert snapshot(pidpath) == before


@pytest.mark.needs_root
def test_sticky_directory_entries(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    with pidsafe.PidFile(sticky / "mine.pid"):
        pass

    planted = sticky / "app.pid"
    write_pidfile(planted, dead_pid())
    os.chown(planted, unused_uid(), -1)
    before = snapshot(planted)
    with pytest.raises(pidsafe.InsecurePidfile, match="owned by uid"):
        pidsafe.PidFile(planted).acquire()
    assert snapshot(planted) == before


def test_writable_or_linked_file_rejected(pidpath: Path, piddir: Path) -> None:
    write_pidfile(pidpath, dead_pid())
    pidpath.chmod(0o664)
    with pytest.raises(pidsafe.InsecurePidfile, match="writable by group"):
        pidsafe.PidFile(pidpath).acquire()

    pidpath.chmod(0o644)
    os.link(pidpath, piddir / "second-name")
    with pytest.raises(pidsafe.InsecurePidfile, match="2 hard links"):
        pidsafe.PidFile(pidpath).acquire()


@pytest.mark.parametrize("target_exists", [True, False])
def test_symlink_at_name(pidpath: Path, tmp_path: Path, target_exists: bool) -> None:
    target = tmp_path / "victim"
    if target_exists:
        target.write_text("precious\n")
    pidpath.symlink_to(target)

    with pytest.raises(pidsafe.PidfileSymlink):
        pidsafe.PidFile(pidpath).acquire()

    assert pidpath.is_symlink()
    if target_exists:
        assert target.read_text() == "precious\n"
    else:
        assert not target.exists()


def test_fifo_at_name(pidpath: Path) -> None:
    os.mkfifo(pidpath, 0o644)
    with pytest.raises(pidsafe.PidfileNotRegular, match="FIFO"):
        pidsafe.PidFile(pidpath).acquire()
    assert stat.S_ISFIFO(os.stat(pidpath).st_mode)


def test_directory_at_name(pidpath: Path) -> None:
    pidpath.mkdir(mode=0o755)
    with pytest.raises(pidsafe.PidfileNotRegular, match="directory"):
        pidsafe.PidFile(pidpath).acquire()


def test_socket_at_name(piddir: Path) -> None:
    # Linux limits AF_UNIX paths to 108 bytes, so bind relative to the cwd.
    path = piddir / "s.pid"
    listener = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(piddir)
    try:
        listener.bind("s.pid")
    finally:
        os.chdir(cwd)
    try:
        with pytest.raises(pidsafe.PidfileNotRegular, match="socket"):
            pidsafe.PidFile(path).acquire()
    finally:
        listener.close()


def unused_uid() -> int:
    """Return a uid with no passwd entry, so that no real user owns its files."""
    for uid in range(61_000, 62_000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no unused uid in 61000..61999")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory under the system temp dir that every user may search.

    tmp_path is not: pytest makes its base directory private to the caller.
    """
    path = Path(tempfile.mkdtemp(prefix="pidsafe-hold-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.chmod(0o755)
    subprocess.run(["rm", "-rf", "--", str(path)], check=True, timeout=30)


def test_read_only_directory(public_dir: Path) -> None:
    read_only = public_dir / "ro"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    uid = unused_uid() if IS_ROOT else os.geteuid()

    result = run_worker("try-start", str(read_only / "app.pid"), str(uid))

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] == "PidfilePermissionError", report
    assert "permission denied creating it in directory" in report["message"]
    assert report["exists"] is False


@pytest.mark.needs_root
def test_foreign_file_in_sticky_directory(public_dir: Path) -> None:
    # Root plants the file; the starter runs as an unprivileged user.
    sticky = public_dir / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    planted = sticky / "app.pid"
    planted.write_text("1\n")
    planted.chmod(0o644)
    before = snapshot(planted)

    result = run_worker("try-start", str(planted), str(unused_uid()))

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["error"] == "PidfilePermissionError", report
    assert "it is owned by uid 0" in report["message"]
    assert snapshot(planted) == before


def in_mount_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run the shell `script` as root in a private mount namespace."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.needs_mountns
def test_read_only_file_system(piddir: Path) -> None:
    target = shlex.quote(str(piddir))
    worker = f"{shlex.quote(sys.executable)} {shlex.quote(WORKER)}"
    result = in_mount_namespace(
        f"mount --bind {target} {target}\n"
        f"mount -o remount,bind,ro {target}\n"
        f"{worker} try-start {target}/app.pid || true\n"
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errno"] == errno.EROFS, report
    assert "read-only" in report["message"]


@pytest.mark.needs_mountns
def test_full_file_system_removes_new_file(piddir: Path) -> None:
    target = shlex.quote(str(piddir))
    worker = f"{shlex.quote(sys.executable)} {shlex.quote(WORKER)}"
    result = in_mount_namespace(
        f"mount -t tmpfs -o size=4k,mode=0700 tmpfs {target}\n"
        f"dd if=/dev/zero of={target}/fill bs=1k count=64 2>/dev/null || true\n"
        f"{worker} try-start {target}/app.pid || true\n"
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errno"] == errno.ENOSPC, report
    assert "cannot write the PID" in report["message"]
    assert report["exists"] is False


def test_write_failure_keeps_existing_file(
    pidpath: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(_hold.os, "pwrite", fail)
    with pytest.raises(pidsafe.PidfileError, match="quota") as caught:
        pidsafe.PidFile(pidpath).acquire()
    assert caught.value.errno == errno.EDQUOT
    assert not pidpath.exists()

    write_pidfile(pidpath, dead_pid())
    with pytest.raises(pidsafe.PidfileError, match="quota"):
        pidsafe.PidFile(pidpath).acquire()
    assert pidpath.exists()
    assert flock_held(os.stat(pidpath)) is False


# --- python-daemon -------------------------------------------------------------


@pytest.mark.needs_procfs
def test_python_daemon_writes_daemon_pid(pidpath: Path, children: Children) -> None:
    launcher = children.start("daemon", str(pidpath), "60")
    code, output = finish(launcher)
    assert code == 0, output

    wait_until(
        lambda: pidsafe.status(pidpath).state == "running", 20, "the daemon's PID"
    )
    daemon_pid = pidsafe.read_pidfile(pidpath).pid
    children.pids.append(daemon_pid)
    assert daemon_pid != launcher.pid

    with pytest.raises(pidsafe.AlreadyRunning) as caught:
        pidsafe.PidFile(pidpath).acquire()
    assert caught.value.pid == daemon_pid

    os.kill(daemon_pid, signal.SIGTERM)
    wait_until(lambda: not pidpath.exists(), 20, "the daemon to remove its file")
    wait_until(lambda: not pidsafe.is_alive(daemon_pid), 20, "the daemon to exit")
