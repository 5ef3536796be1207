"""Removing PID files: only regular files, only the inode that was checked."""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pidsafe import (
    InsecurePidfile,
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfileSymlink,
    remove_pidfile,
    unlink_pidfile_safely,
)


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def pidfile(piddir: Path) -> Path:
    """A trusted PID file containing 4242."""
    return write_file(piddir / "service.pid", b"4242\n")


def file_type(path: Path) -> int:
    """Return the S_IFMT bits of `path` itself, not of a symlink's target."""
    return stat.S_IFMT(os.lstat(path).st_mode)


def test_remove_regular_file(pidfile: Path) -> None:
    remove_pidfile(pidfile)

    assert not os.path.lexists(pidfile)


def test_remove_accepts_str_path(pidfile: Path) -> None:
    remove_pidfile(str(pidfile))

    assert not os.path.lexists(pidfile)


def test_remove_skips_contents(piddir: Path) -> None:
    # Removal never reads the file, so malformed contents do not matter.
    path = write_file(piddir / "service.pid", b"-1 garbage\0")

    remove_pidfile(path)

    assert not os.path.lexists(path)


def test_remove_relative_path(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path
) -> None:
    monkeypatch.chdir(piddir)

    remove_pidfile("service.pid")

    assert not os.path.lexists(pidfile)


def test_remove_symlink_rejected(piddir: Path, pidfile: Path) -> None:
    link = piddir / "link.pid"
    link.symlink_to(pidfile)

    with pytest.raises(PidfileSymlink) as caught:
        remove_pidfile(link)

    assert caught.value.path == str(link)
    assert caught.value.reason == "is a symlink; refusing to remove it"
    assert link.is_symlink()
    assert os.readlink(link) == str(pidfile)
    assert pidfile.read_bytes() == b"4242\n"


def test_remove_dangling_symlink_rejected(piddir: Path) -> None:
    link = piddir / "service.pid"
    link.symlink_to(piddir / "gone")

    with pytest.raises(PidfileSymlink):
        remove_pidfile(link)

    assert link.is_symlink()


def test_remove_fifo_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    os.mkfifo(path)

    with pytest.raises(PidfileNotRegular) as caught:
        remove_pidfile(path)

    assert caught.value.reason == "is a FIFO, not a regular file"
    assert stat.S_ISFIFO(file_type(path))


def test_remove_socket_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(os.fspath(path))

        with pytest.raises(PidfileNotRegular) as caught:
            remove_pidfile(path)

    assert caught.value.reason == "is a socket, not a regular file"
    assert stat.S_ISSOCK(file_type(path))


def test_remove_directory_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    path.mkdir()

    with pytest.raises(PidfileNotRegular) as caught:
        remove_pidfile(path)

    assert caught.value.reason == "is a directory, not a regular file"
    assert path.is_dir()


def test_remove_missing_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"

    with pytest.raises(PidfileMissing) as caught:
        remove_pidfile(path)

    assert caught.value.path == str(path)
    assert caught.value.reason == "does not exist"


@pytest.mark.parametrize("suffix", ["/", "/.."])
def test_remove_directory_path_rejected(pidfile: Path, suffix: str) -> None:
    with pytest.raises(PidfileNotRegular):
        remove_pidfile(f"{pidfile}{suffix}")

    assert pidfile.exists()


def test_remove_own_file_in_writable_directory(piddir: Path, pidfile: Path) -> None:
    piddir.chmod(0o777)

    remove_pidfile(pidfile)

    assert not os.path.lexists(pidfile)


@pytest.mark.needs_root
def test_remove_foreign_file_in_writable_directory(piddir: Path, pidfile: Path) -> None:
    # In a directory that others may write, the name could have been swapped
    # for someone else's file, so only the caller's own files are removed.
    os.chown(pidfile, 65534, 65534)
    piddir.chmod(0o777)

    with pytest.raises(InsecurePidfile) as caught:
        remove_pidfile(pidfile)

    assert caught.value.reason == (
        f"refusing to remove it: directory {piddir} is writable by group and others"
    )
    assert pidfile.read_bytes() == b"4242\n"


# The silent API.


def test_unlink_safely_removes_regular_file(pidfile: Path) -> None:
    assert unlink_pidfile_safely(pidfile) is None

    assert not os.path.lexists(pidfile)


@pytest.fixture
def special_files(piddir: Path) -> Iterator[dict[Path, int]]:
    """Non-regular files at PID file names, mapped to their file types."""
    target = write_file(piddir / "target", b"4242\n")
    (piddir / "symlink.pid").symlink_to(target)
    (piddir / "dangling.pid").symlink_to(piddir / "gone")
    os.mkfifo(piddir / "fifo.pid")
    (piddir / "directory.pid").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(piddir / "socket.pid"))
    try:
        paths = [path for path in piddir.iterdir() if path.suffix == ".pid"]
        yield {path: file_type(path) for path in paths}
    finally:
        server.close()


def test_unlink_safely_leaves_special_files(
    piddir: Path, special_files: dict[Path, int]
) -> None:
    for path, kind in special_files.items():
        assert unlink_pidfile_safely(path) is None
        assert file_type(path) == kind, path
    assert (piddir / "target").read_bytes() == b"4242\n"


@pytest.mark.parametrize(
    "path",
    [b"/run/service.pid", 42, None, "/run/service\0.pid", "", "/"],
    ids=repr,
)
def test_unlink_safely_never_raises(path: Any) -> None:
    assert unlink_pidfile_safely(path) is None


def test_unlink_safely_missing(piddir: Path) -> None:
    assert unlink_pidfile_safely(piddir / "service.pid") is None


# Replacing the file between the check and the removal. remove_pidfile
# lstats the name twice: once to judge it and once, just before unlinkat, to
# check that the inode is unchanged. The tests wrap os.stat (pidsafe._read
# calls it through the os module) and rename another file over the name just
# before the second lstat, as an attacker racing the removal would.


def swap_on_stat(
    monkeypatch: pytest.MonkeyPatch, name: str, at_call: int, swap: Callable[[], None]
) -> list[str]:
    """Run `swap` just before the `at_call`-th dir_fd-relative stat of `name`."""
    real_stat = os.stat
    calls: list[str] = []

    def stat_then_swap(target: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if target == name and kwargs.get("dir_fd") is not None:
            calls.append(target)
            if len(calls) == at_call:
                swap()
        return real_stat(target, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_then_swap)
    return calls


def test_replaced_file_not_removed(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path
) -> None:
    replacement = write_file(piddir / "replacement", b"999\n")
    replacement_ino = os.stat(replacement).st_ino
    calls = swap_on_stat(
        monkeypatch, "service.pid", 2, lambda: os.rename(replacement, pidfile)
    )

    with pytest.raises(PidfileError) as caught:
        remove_pidfile(pidfile)
    monkeypatch.undo()

    assert len(calls) == 2
    assert type(caught.value) is PidfileError
    assert caught.value.path == str(pidfile)
    assert caught.value.reason == "was replaced while being removed; left it"
    assert caught.value.errno == errno.EAGAIN
    assert pidfile.read_bytes() == b"999\n"
    assert os.stat(pidfile).st_ino == replacement_ino


def test_swapped_symlink_not_removed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, piddir: Path, pidfile: Path
) -> None:
    precious = write_file(tmp_path / "precious", b"keep me\n")
    link = piddir / "link"
    link.symlink_to(precious)
    swap_on_stat(monkeypatch, "service.pid", 2, lambda: os.rename(link, pidfile))

    with pytest.raises(PidfileError) as caught:
        remove_pidfile(pidfile)
    monkeypatch.undo()

    assert caught.value.reason == "was replaced while being removed; left it"
    assert pidfile.is_symlink()
    assert precious.read_bytes() == b"keep me\n"


def test_unlink_safely_leaves_replacement(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path
) -> None:
    replacement = write_file(piddir / "replacement", b"999\n")
    calls = swap_on_stat(
        monkeypatch, "service.pid", 2, lambda: os.rename(replacement, pidfile)
    )

    assert unlink_pidfile_safely(pidfile) is None
    monkeypatch.undo()

    assert len(calls) == 2
    assert pidfile.read_bytes() == b"999\n"


def test_removal_without_swap_uses_two_stats(
    monkeypatch: pytest.MonkeyPatch, pidfile: Path
) -> None:
    # The race tests swap the file at the second lstat of the name, so pin
    # that an undisturbed removal makes exactly two.
    calls = swap_on_stat(monkeypatch, "service.pid", 0, lambda: None)

    remove_pidfile(pidfile)
    monkeypatch.undo()

    assert calls == ["service.pid", "service.pid"]
    assert not os.path.lexists(pidfile)
