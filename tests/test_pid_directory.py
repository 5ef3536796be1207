"""PidDirectory: many reads and removals through one directory fd."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bounded import call_bounded
from pidsafe import (
    InsecurePidfile,
    PidDirectory,
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfileSymlink,
)

PIDS = {"a.pid": 101, "b.pid": 202, "c.pid": 303}


@pytest.fixture
def pidfiles(piddir: Path) -> Path:
    """The private directory with one trusted PID file per entry of PIDS."""
    for name, pid in PIDS.items():
        path = piddir / name
        path.write_bytes(b"%d\n" % pid)
        path.chmod(0o644)
    return piddir


def test_reads_many_names(pidfiles: Path) -> None:
    with PidDirectory(pidfiles) as directory:
        assert directory.path == str(pidfiles)
        for name, pid in PIDS.items():
            record = directory.read(name)
            assert record.pid == pid
            assert record.path == f"{pidfiles}/{name}"
            assert record.trusted is True
            assert record.reason is None
            assert directory.read_safely(name) == pid


def test_removes_many_names(pidfiles: Path) -> None:
    with PidDirectory(str(pidfiles)) as directory:
        for name in PIDS:
            directory.remove(name)

    assert list(pidfiles.iterdir()) == []


def test_missing_name(pidfiles: Path) -> None:
    with PidDirectory(pidfiles) as directory:
        with pytest.raises(PidfileMissing) as caught:
            directory.read("gone.pid")
        assert caught.value.path == f"{pidfiles}/gone.pid"
        assert directory.read_safely("gone.pid") is None

        with pytest.raises(PidfileMissing):
            directory.remove("gone.pid")


def test_special_entries_rejected(pidfiles: Path) -> None:
    (pidfiles / "link.pid").symlink_to(pidfiles / "a.pid")
    os.mkfifo(pidfiles / "fifo.pid")

    with PidDirectory(pidfiles) as directory:
        error = call_bounded(directory.read, "link.pid")
        assert type(error) is PidfileSymlink
        error = call_bounded(directory.read, "fifo.pid")
        assert type(error) is PidfileNotRegular
        assert error.reason == "is a FIFO, not a regular file"
        assert call_bounded(directory.read_safely, "fifo.pid") is None

        with pytest.raises(PidfileSymlink):
            directory.remove("link.pid")
        with pytest.raises(PidfileNotRegular):
            directory.remove("fifo.pid")

    assert (pidfiles / "link.pid").is_symlink()
    assert (pidfiles / "a.pid").read_bytes() == b"101\n"


@pytest.mark.parametrize(
    "name", ["../a.pid", "sub/a.pid", "a.pid/", "..", ".", ""], ids=repr
)
def test_non_single_names_rejected(pidfiles: Path, name: str) -> None:
    # "../a.pid" would name a file outside the directory that was judged.
    outside = pidfiles.parent / "a.pid"
    outside.write_bytes(b"404\n")

    with PidDirectory(pidfiles) as directory:
        with pytest.raises(ValueError, match="is not a single file name"):
            directory.read(name)
        with pytest.raises(ValueError, match="is not a single file name"):
            directory.remove(name)
        assert directory.read_safely(name) is None

    assert outside.read_bytes() == b"404\n"
    assert sorted(path.name for path in pidfiles.iterdir()) == sorted(PIDS)


def test_closed_handle_raises(pidfiles: Path) -> None:
    directory = PidDirectory(pidfiles)
    directory.close()

    with pytest.raises(ValueError, match="PidDirectory is closed"):
        directory.read("a.pid")
    with pytest.raises(ValueError, match="PidDirectory is closed"):
        directory.remove("a.pid")
    with pytest.raises(ValueError, match="PidDirectory is closed"):
        directory.fileno()
    with pytest.raises(ValueError, match="PidDirectory is closed"):
        _ = directory.path
    assert directory.read_safely("a.pid") is None
    directory.close()  # closing twice is allowed

    assert (pidfiles / "a.pid").exists()


def test_context_manager_closes_fd(pidfiles: Path) -> None:
    with PidDirectory(pidfiles) as directory:
        fd = directory.fileno()
        assert os.path.samestat(os.fstat(fd), os.stat(pidfiles))

    with pytest.raises(OSError, match="Bad file descriptor") as caught:
        os.fstat(fd)
    assert caught.value.errno == errno.EBADF
    with pytest.raises(ValueError, match="PidDirectory is closed"):
        directory.fileno()


def test_context_manager_closes_on_error(pidfiles: Path) -> None:
    fds = []

    def fail_inside() -> None:
        with PidDirectory(pidfiles) as directory:
            fds.append(directory.fileno())
            raise RuntimeError("leave the block")

    with pytest.raises(RuntimeError, match="leave the block"):
        fail_inside()

    (fd,) = fds
    with pytest.raises(OSError, match="Bad file descriptor") as caught:
        os.fstat(fd)
    assert caught.value.errno == errno.EBADF


def test_chmod_after_open_untrusts(pidfiles: Path) -> None:
    with PidDirectory(pidfiles) as directory:
        assert directory.read("a.pid").trusted is True

        pidfiles.chmod(0o777)

        record = directory.read("a.pid")
        assert record.pid == 101
        assert record.trusted is False
        assert record.reason == (
            f"directory {pidfiles} is writable by group and others"
        )
        assert directory.read_safely("a.pid") is None
        with pytest.raises(InsecurePidfile):
            directory.read("a.pid", strict=True)


def test_untrusted_verdict_persists(pidfiles: Path) -> None:
    # A directory found insecure stays insecure for the handle's lifetime:
    # someone may have swapped entries while it was writable.
    with PidDirectory(pidfiles) as directory:
        pidfiles.chmod(0o777)
        assert directory.read("a.pid").trusted is False

        pidfiles.chmod(0o700)

        assert directory.read("a.pid").trusted is False
        assert directory.read_safely("a.pid") is None


def test_renamed_directory_still_read(tmp_path: Path, pidfiles: Path) -> None:
    # Every call goes through the held fd, not through the path.
    with PidDirectory(pidfiles) as directory:
        pidfiles.rename(tmp_path / "moved")

        assert directory.read("b.pid").pid == 202
        directory.remove("c.pid")

    assert not (tmp_path / "moved" / "c.pid").exists()
    assert (tmp_path / "moved" / "b.pid").exists()


def test_missing_directory_raises(piddir: Path) -> None:
    with pytest.raises(PidfileMissing):
        PidDirectory(piddir / "gone")


def test_regular_file_as_directory_raises(pidfiles: Path) -> None:
    with pytest.raises(PidfileError) as caught:
        PidDirectory(pidfiles / "a.pid")

    assert caught.value.errno == errno.ENOTDIR
