"""System calls that fail mid-operation surface as PidfileError with the path."""

from __future__ import annotations

import errno
import os
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
