"""status and clean_pidfile: states, exit codes, and what is kept."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from bounded import call_bounded
from child_process import lock_holder, reaped_pid
from pidsafe import (
    InsecurePidfile,
    InvalidPidfile,
    PidfileError,
    PidfileNotRegular,
    PidfileSymlink,
    Status,
    clean_pidfile,
    status,
)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def pidfile(piddir: Path) -> Path:
    """Path of a PID file that the test fills in."""
    return piddir / "service.pid"


@pytest.fixture
def stale_pid() -> int:
    """PID of a child that has exited and been reaped."""
    return reaped_pid()


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every fcntl.flock call, so a test can check none was made."""
    calls: list[Any] = []
    real_flock = fcntl.flock

    def recording_flock(fd: int, operation: int) -> None:
        calls.append((fd, operation))
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", recording_flock)
    return calls


# status


def test_status_running(pidfile: Path) -> None:
    write_file(pidfile, b"%d\n" % os.getpid())

    found = status(pidfile)

    assert isinstance(found, Status)
    assert found.state == "running"
    assert found.exit_code == 0
    assert found.path == str(pidfile)
    assert found.pid == os.getpid()
    assert found.reason is None
    assert found.record is not None
    assert found.record.pid == os.getpid()
    assert found.record.trusted is True


def test_status_running_untrusted(pidfile: Path) -> None:
    # Reading does not require trust: the record carries the verdict.
    write_file(pidfile, b"%d\n" % os.getpid(), 0o666)

    found = status(pidfile)

    assert found.state == "running"
    assert found.record is not None
    assert found.record.trusted is False
    assert found.record.reason == "file is writable by group and others"


def test_status_stale(pidfile: Path, stale_pid: int) -> None:
    write_file(pidfile, b"%d\n" % stale_pid)

    found = status(pidfile)

    assert found.state == "stale"
    assert found.exit_code == 1
    assert found.pid == stale_pid
    assert found.reason == f"process {stale_pid} is not running"


def test_status_absent(pidfile: Path) -> None:
    found = status(pidfile)

    assert found.state == "absent"
    assert found.exit_code == 3
    assert found.pid is None
    assert found.reason == "no PID file"


def test_status_absent_directory(piddir: Path) -> None:
    found = status(piddir / "gone" / "service.pid")

    assert found.state == "absent"
    assert found.exit_code == 3


def make_symlink(path: Path) -> None:
    target = write_file(path.with_name("target"), b"%d\n" % os.getpid())
    path.symlink_to(target)


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_negative(path: Path) -> None:
    write_file(path, b"-1\n")


def make_empty(path: Path) -> None:
    write_file(path, b"")


def make_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (make_symlink, "is a symlink, which is never followed"),
        (make_fifo, "is a FIFO, not a regular file"),
        (make_negative, "contains a sign '-' at offset 0"),
        (make_directory, "is a directory, not a regular file"),
    ],
    ids=["symlink", "fifo", "negative", "directory"],
)
def test_status_refused(pidfile: Path, make: Any, reason: str) -> None:
    make(pidfile)

    found = call_bounded(status, pidfile)

    assert isinstance(found, Status)
    assert found.state == "refused"
    assert found.exit_code == 4
    assert found.pid is None
    assert found.reason == reason


def test_status_unlocked_empty_is_stale(pidfile: Path) -> None:
    # A starter that crashed between creating the file and writing its PID
    # leaves an empty file that nobody holds.
    make_empty(pidfile)

    found = call_bounded(status, pidfile)

    assert found.state == "stale"
    assert found.exit_code == 1
    assert found.pid is None
    assert found.reason == "is empty and not locked"


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("/", "path names a directory, not a file"),
        ("\0", "path contains a NUL byte"),
    ],
    ids=["trailing-slash", "nul-byte"],
)
def test_status_refuses_bad_path(pidfile: Path, suffix: str, reason: str) -> None:
    found = status(f"{pidfile}{suffix}")

    assert found.state == "refused"
    assert found.exit_code == 4
    assert found.reason == reason


@pytest.mark.needs_procfs
def test_status_starting(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=False):
        found = status(pidfile)

    assert found.state == "starting"
    assert found.exit_code == 0
    assert found.pid is None
    assert found.reason == "locked, PID not written yet"


def test_status_running_lock_holder(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=True) as holder:
        found = status(pidfile)

    assert found.state == "running"
    assert found.pid == holder


@pytest.mark.needs_procfs
def test_status_takes_no_lock(pidfile: Path, no_flock: list[Any]) -> None:
    # A status query that took the lock, even briefly, could make a
    # concurrent starter's non-blocking flock fail.
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=False):
        assert status(pidfile).state == "starting"
    write_file(pidfile, b"%d\n" % os.getpid())
    assert status(pidfile).state == "running"

    assert no_flock == []
    # The recorder does see flock calls: clean_pidfile makes one.
    clean_pidfile(pidfile)
    assert no_flock != []


# clean_pidfile


def test_clean_removes_stale(pidfile: Path, stale_pid: int) -> None:
    write_file(pidfile, b"%d\n" % stale_pid)

    found = clean_pidfile(pidfile)

    assert found.state == "stale"
    assert found.exit_code == 1
    assert found.pid == stale_pid
    assert found.reason == f"process {stale_pid} is not running"
    assert not os.path.lexists(pidfile)


def test_clean_removes_unlocked_empty(pidfile: Path) -> None:
    # An empty, unlocked file is what a starter leaves when it crashes
    # before writing its PID.
    write_file(pidfile, b"")

    found = clean_pidfile(pidfile)

    assert found.state == "stale"
    assert found.pid is None
    assert found.reason == "is empty and not locked"
    assert not os.path.lexists(pidfile)


def test_clean_keeps_running(pidfile: Path) -> None:
    write_file(pidfile, b"%d\n" % os.getpid())

    found = clean_pidfile(pidfile)

    assert found.state == "running"
    assert found.pid == os.getpid()
    assert pidfile.read_bytes() == b"%d\n" % os.getpid()


def test_clean_keeps_locked_file(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=True) as holder:
        found = clean_pidfile(pidfile)

        assert found.state == "running"
        assert found.pid == holder
        assert found.reason == "lock is held"
        assert pidfile.read_bytes() == b"%d\n" % holder


def test_clean_keeps_locked_stale_pid(pidfile: Path, stale_pid: int) -> None:
    # The lock, not the PID, proves a holder: a holder that has not yet
    # rewritten an old PID must keep its file.
    write_file(pidfile, b"%d\n" % stale_pid)

    with lock_holder(pidfile, write_pid=False):
        found = clean_pidfile(pidfile)

        assert found.state == "running"
        assert found.reason == "lock is held"
        assert pidfile.read_bytes() == b"%d\n" % stale_pid


def test_clean_keeps_locked_empty(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=False):
        found = clean_pidfile(pidfile)

        assert found.state == "starting"
        assert found.pid is None
        assert pidfile.exists()


def test_clean_absent(pidfile: Path) -> None:
    found = clean_pidfile(pidfile)

    assert found.state == "absent"
    assert found.exit_code == 3
    assert found.reason == "no PID file"


def test_clean_absent_directory(piddir: Path) -> None:
    found = clean_pidfile(piddir / "gone" / "service.pid")

    assert found.state == "absent"


def test_clean_rejects_writable_file(pidfile: Path, stale_pid: int) -> None:
    write_file(pidfile, b"%d\n" % stale_pid, 0o666)

    with pytest.raises(InsecurePidfile) as caught:
        clean_pidfile(pidfile)

    assert caught.value.path == str(pidfile)
    assert caught.value.reason == (
        "refusing to clean it: file is writable by group and others"
    )
    assert pidfile.read_bytes() == b"%d\n" % stale_pid


def test_clean_rejects_symlink(piddir: Path, pidfile: Path, stale_pid: int) -> None:
    target = write_file(piddir / "target", b"%d\n" % stale_pid)
    pidfile.symlink_to(target)

    with pytest.raises(PidfileSymlink):
        clean_pidfile(pidfile)

    assert pidfile.is_symlink()
    assert target.exists()


def test_clean_rejects_fifo(pidfile: Path) -> None:
    os.mkfifo(pidfile)

    error = call_bounded(clean_pidfile, pidfile)

    assert type(error) is PidfileNotRegular
    assert os.path.lexists(pidfile)


def test_clean_rejects_malformed(pidfile: Path) -> None:
    write_file(pidfile, b"-1\n")

    with pytest.raises(InvalidPidfile):
        clean_pidfile(pidfile)

    assert pidfile.read_bytes() == b"-1\n"


def test_clean_releases_lock(pidfile: Path) -> None:
    write_file(pidfile, b"%d\n" % os.getpid())
    clean_pidfile(pidfile)

    fd = os.open(pidfile, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_clean_leaves_replacement(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path, stale_pid: int
) -> None:
    # clean_pidfile locks the file, then lstats the name to check that it
    # still refers to the locked inode before unlinkat. A rename just before
    # that lstat must leave the new file in place.
    write_file(pidfile, b"%d\n" % stale_pid)
    replacement = write_file(piddir / "replacement", b"999\n")
    real_stat = os.stat
    calls: list[str] = []

    def stat_then_swap(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if target == "service.pid" and kwargs.get("dir_fd") is not None:
            calls.append(target)
            if len(calls) == 1:
                os.rename(replacement, pidfile)
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_then_swap)

    with pytest.raises(PidfileError) as caught:
        clean_pidfile(pidfile)
    monkeypatch.undo()

    assert calls == ["service.pid"]
    assert caught.value.reason == "was replaced while being cleaned; left it"
    assert caught.value.errno == errno.EAGAIN
    assert pidfile.read_bytes() == b"999\n"
