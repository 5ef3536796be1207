"""System calls that fail mid-operation surface as PidfileError with the path."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pidsafe
from pidsafe import _path, _status


def test_symlink_vanishing_during_walk(
    piddir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = piddir / "real"
    real.mkdir(mode=0o700)
    (real / "app.pid").write_text(f"{os.getpid()}\n")
    (piddir / "alias").symlink_to("real")

    def vanished(*args: object, **kwargs: object) -> str:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(_path.os, "readlink", vanished)
    with pytest.raises(pidsafe.PidfileError) as caught:
        pidsafe.read_pidfile(piddir / "alias" / "app.pid")
    assert caught.value.errno == errno.EAGAIN
    assert "changed while being resolved" in str(caught.value)
    assert str(piddir / "alias") in str(caught.value)


def test_clean_unlink_failure_named(
    piddir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = piddir / "stale.pid"
    path.write_text("")  # an empty unlocked file counts as stale

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_status.os, "unlink", denied)
    with pytest.raises(pidsafe.PidfileError) as caught:
        pidsafe.clean_pidfile(path)
    assert caught.value.errno == errno.EACCES
    assert "cannot remove it" in str(caught.value)
    assert path.exists()


def test_status_unknown_for_failed_syscall(
    piddir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise pidsafe.PidfileError(
            str(piddir / "app.pid"),
            "cannot open directory /: Too many open files",
            errno.EMFILE,
        )

    monkeypatch.setattr(_status, "open_parent", exhausted)
    found = pidsafe.status(piddir / "app.pid")
    assert found.state == "unknown"
    assert found.exit_code == 4
    assert "Too many open files" in (found.reason or "")


def test_status_refused_for_not_a_directory(piddir: Path) -> None:
    (piddir / "file").write_text("x")
    found = pidsafe.status(piddir / "file" / "app.pid")
    assert found.state == "refused"
    assert "is not a directory" in (found.reason or "")


def test_empty_path_is_missing() -> None:
    with pytest.raises(pidsafe.PidfileMissing, match="path is empty"):
        pidsafe.read_pidfile("")
    assert pidsafe.status("").state == "absent"


def test_deep_path_needs_few_fds(piddir: Path) -> None:
    # 500 nested directories: with one open fd per directory the walk
    # would need more descriptors than the limit of 64 set below allows.
    deep = piddir
    for _ in range(500):
        deep = deep / "d"
        deep.mkdir()
    (deep / "app.pid").write_text("4242\n")
    code = (
        "import resource, sys, pidsafe\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "print(pidsafe.read_pidfile(sys.argv[1]).pid)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(deep / "app.pid")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4242"


def test_dotdot_after_rename_rejected(
    piddir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (piddir / "a" / "b").mkdir(parents=True)
    (piddir / "c").mkdir()
    (piddir / "a" / "app.pid").write_text("4242\n")
    real_open = os.open

    def moving_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if path == "..":
            # Move the child to another parent just before ".." is opened.
            os.rename(piddir / "a" / "b", piddir / "c" / "b")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_path.os, "open", moving_open)
    with pytest.raises(pidsafe.PidfileError) as caught:
        pidsafe.read_pidfile(piddir / "a" / "b" / ".." / "app.pid")
    monkeypatch.undo()
    assert caught.value.errno == errno.EAGAIN
    assert "moved while being resolved" in str(caught.value)


def test_dotdot_returns_to_parent(piddir: Path) -> None:
    (piddir / "a" / "b").mkdir(parents=True)
    (piddir / "a" / "app.pid").write_text("4242\n")
    record = pidsafe.read_pidfile(piddir / "a" / "b" / ".." / "app.pid")
    assert record.pid == 4242
    assert record.trusted
