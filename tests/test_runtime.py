"""runtime_dir: each candidate, and each way a candidate can be unsafe."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pidsafe
from pidsafe import RuntimeDirError, _runtime, runtime_dir

OTHER_UID = 54321  # no such user is needed: root can chown to any uid


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_override_variable_used_as_is(tmp_path: Path) -> None:
    target = tmp_path / "custom"
    found = runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(target)})
    assert found == target
    assert target.is_dir()
    assert _mode(target) == 0o700


def test_override_beats_xdg(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    target = tmp_path / "custom"
    environ = {"APP_DIR": str(target), "XDG_RUNTIME_DIR": str(xdg)}
    assert runtime_dir("app", env_var="APP_DIR", environ=environ) == target
    assert not (xdg / "app").exists()


def test_empty_override_is_ignored(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    environ = {"APP_DIR": "", "XDG_RUNTIME_DIR": str(xdg)}
    assert runtime_dir("app", env_var="APP_DIR", environ=environ) == xdg / "app"


def test_xdg_runtime_dir_gets_app_subdirectory(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    found = runtime_dir("app", environ={"XDG_RUNTIME_DIR": str(xdg)})
    assert found == xdg / "app"
    assert _mode(found) == 0o700


def test_existing_private_directory_is_reused(tmp_path: Path) -> None:
    target = tmp_path / "custom"
    target.mkdir(mode=0o700)
    (target / "keep").write_text("x")
    environ = {"APP_DIR": str(target)}
    assert runtime_dir("app", env_var="APP_DIR", environ=environ) == target
    assert (target / "keep").read_text() == "x"


def test_override_symlink_rejected(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(RuntimeDirError) as caught:
        runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(link)})
    message = str(caught.value)
    assert "$APP_DIR" in message
    assert "symlink" in message
    assert str(link) in message


def test_override_writable_by_others_rejected(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    with pytest.raises(RuntimeDirError) as caught:
        runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(target)})
    assert "$APP_DIR" in str(caught.value)
    assert "writable by group or others" in str(caught.value)
    assert _mode(target) == 0o777  # a failed call changes nothing


def test_override_regular_file_rejected(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(RuntimeDirError, match="not a directory"):
        runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(target)})


def test_missing_override_without_create(tmp_path: Path) -> None:
    target = tmp_path / "absent"
    with pytest.raises(RuntimeDirError) as caught:
        runtime_dir(
            "app", env_var="APP_DIR", environ={"APP_DIR": str(target)}, create=False
        )
    assert caught.value.errno == 2
    assert not target.exists()


def test_override_parent_missing_not_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such"
    with pytest.raises(RuntimeDirError, match=r"\$APP_DIR"):
        runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(target)})
    assert not (tmp_path / "no").exists()


def test_invalid_xdg_is_error_not_fallback(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    xdg.chmod(0o777)
    with pytest.raises(RuntimeDirError, match=r"\$XDG_RUNTIME_DIR"):
        runtime_dir("app", environ={"XDG_RUNTIME_DIR": str(xdg)})
    assert not (xdg / "app").exists()


@pytest.mark.parametrize("app", ["", ".", "..", "a/b", "x\0y"])
def test_invalid_app_name(app: str) -> None:
    with pytest.raises(ValueError, match="one file name"):
        runtime_dir(app, environ={})


@pytest.mark.needs_root
def test_directory_owned_by_other_user_rejected(tmp_path: Path) -> None:
    target = tmp_path / "squatted"
    target.mkdir(mode=0o700)
    os.chown(target, OTHER_UID, OTHER_UID)
    with pytest.raises(RuntimeDirError) as caught:
        runtime_dir("app", env_var="APP_DIR", environ={"APP_DIR": str(target)})
    assert f"owned by uid {OTHER_UID}" in str(caught.value)


@pytest.mark.needs_root
def test_temporary_fallback_squatted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(_runtime, "_usable_base", lambda path: False)
    squatted = shared / f"app-{os.geteuid()}"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, OTHER_UID, OTHER_UID)

    with pytest.raises(RuntimeDirError) as caught:
        runtime_dir("app", environ={})
    assert "someone else may have created it first" in str(caught.value)


def test_temporary_fallback_created_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(_runtime, "_usable_base", lambda path: False)

    found = runtime_dir("app", environ={})
    assert found == shared / f"app-{os.geteuid()}"
    assert _mode(found) == 0o700
    assert found.stat().st_uid == os.geteuid()


@pytest.mark.needs_root
def test_root_uses_run_app() -> None:
    if os.path.isdir(f"/run/user/{os.geteuid()}"):
        pytest.skip("/run/user/0 exists here, so it is chosen before /run")
    app = f"pidsafe-test-{os.getpid()}"
    found = runtime_dir(app, environ={})
    try:
        assert found == Path("/run") / app
        assert _mode(found) == 0o700
    finally:
        found.rmdir()


def test_cli_prints_directory(tmp_path: Path) -> None:
    target = tmp_path / "cli"
    env = {**os.environ, "APP_DIR": str(target)}
    done = subprocess.run(
        [sys.executable, "-m", "pidsafe", "runtime-dir", "app", "--env-var", "APP_DIR"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)


def test_cli_error_names_variable(tmp_path: Path) -> None:
    target = tmp_path / "open"
    target.mkdir()
    target.chmod(0o777)
    env = {**os.environ, "APP_DIR": str(target)}
    done = subprocess.run(
        [sys.executable, "-m", "pidsafe", "runtime-dir", "app", "--env-var", "APP_DIR"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert "$APP_DIR" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_exported() -> None:
    assert pidsafe.runtime_dir is runtime_dir


def test_relative_xdg_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(shared))
    monkeypatch.setattr(_runtime, "_usable_base", lambda path: False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "relative").mkdir(mode=0o700)

    found = runtime_dir("app", environ={"XDG_RUNTIME_DIR": "relative"})

    assert found == shared / f"app-{os.geteuid()}"
    assert not (tmp_path / "relative" / "app").exists()
