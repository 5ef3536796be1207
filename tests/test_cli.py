"""The pidsafe command, run as ``python -m pidsafe`` in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pidsafe
from child_process import WAIT_LIMIT, lock_holder, reaped_pid
from pidsafe import cli

READ_KEYS = {"path", "pid", "uid", "mode", "mtime", "trusted", "reason"}
STATUS_KEYS = {"path", "state", "pid", "reason", "exit_code", "file"}
FILE_KEYS = {"pid", "uid", "mode", "mtime", "trusted", "reason"}
ERROR_KEYS = {"path", "error", "reason"}


def run_cli(
    *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pidsafe ARGS`` and return its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "pidsafe", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        cwd=cwd,
        check=False,
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
def running(pidfile: Path) -> Path:
    """A trusted PID file naming the test process itself."""
    return write_file(pidfile, b"%d\n" % os.getpid())


@pytest.fixture
def stale(pidfile: Path) -> tuple[Path, int]:
    """A trusted PID file naming a reaped child, and that child's PID."""
    pid = reaped_pid()
    write_file(pidfile, b"%d\n" % pid)
    return pidfile, pid


@pytest.fixture
def symlink(piddir: Path, pidfile: Path) -> Path:
    """A symlink at the PID file's name, pointing at a valid PID file."""
    target = write_file(piddir / "target", b"%d\n" % os.getpid())
    pidfile.symlink_to(target)
    return pidfile


# read


def test_read_prints_pid(pidfile: Path) -> None:
    write_file(pidfile, b"4242\n")

    result = run_cli("read", pidfile)

    assert result.returncode == 0
    assert result.stdout == "4242\n"
    assert result.stderr == ""


def test_read_relative_path(pidfile: Path) -> None:
    write_file(pidfile, b"4242\n")

    result = run_cli("read", "service.pid", cwd=pidfile.parent)

    assert result.returncode == 0
    assert result.stdout == "4242\n"


def test_read_symlink_fails(symlink: Path) -> None:
    result = run_cli("read", symlink)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {symlink}: is a symlink, which is never followed"
    ]


def test_read_fifo_fails(pidfile: Path) -> None:
    os.mkfifo(pidfile)

    result = run_cli("read", pidfile)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {pidfile}: is a FIFO, not a regular file"
    ]


def test_read_missing_fails(pidfile: Path) -> None:
    result = run_cli("read", pidfile)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {pidfile}: does not exist"
    ]


def test_read_strict_rejects_untrusted(pidfile: Path) -> None:
    write_file(pidfile, b"4242\n", 0o666)

    lenient = run_cli("read", pidfile)
    strict = run_cli("read", "--strict", pidfile)

    assert lenient.returncode == 0
    assert lenient.stdout == "4242\n"
    assert strict.returncode == 1
    assert strict.stdout == ""
    assert strict.stderr.splitlines() == [
        f"pidsafe: PID file {pidfile}: "
        "is untrusted: file is writable by group and others"
    ]


def test_read_json(pidfile: Path) -> None:
    write_file(pidfile, b"4242\n")

    result = run_cli("read", "--json", pidfile)
    data = json.loads(result.stdout)

    assert result.returncode == 0
    assert set(data) == READ_KEYS
    assert data["path"] == str(pidfile)
    assert data["pid"] == 4242
    assert data["uid"] == os.geteuid()
    assert data["mode"] == "0644"
    assert data["mtime"] == os.stat(pidfile).st_mtime
    assert data["trusted"] is True
    assert data["reason"] is None


def test_read_json_error(symlink: Path) -> None:
    result = run_cli("read", "--json", symlink)
    data = json.loads(result.stdout)

    assert result.returncode == 1
    assert data == {
        "path": str(symlink),
        "error": "PidfileSymlink",
        "reason": "is a symlink, which is never followed",
    }
    assert len(result.stderr.splitlines()) == 1


# status


def test_status_running(running: Path) -> None:
    result = run_cli("status", running)

    assert result.returncode == 0
    assert result.stdout == f"{running}: running, PID {os.getpid()}\n"
    assert result.stderr == ""


def test_status_running_untrusted(running: Path) -> None:
    running.chmod(0o666)

    result = run_cli("status", running)

    assert result.returncode == 0
    assert result.stdout == (
        f"{running}: running, PID {os.getpid()} "
        "(untrusted file: file is writable by group and others)\n"
    )


def test_status_stale(stale: tuple[Path, int]) -> None:
    path, pid = stale

    result = run_cli("status", path)

    assert result.returncode == 1
    assert result.stdout == f"{path}: stale, PID {pid}: process {pid} is not running\n"
    assert result.stderr == ""


def test_status_absent(pidfile: Path) -> None:
    result = run_cli("status", pidfile)

    assert result.returncode == 3
    assert result.stdout == f"{pidfile}: absent: no PID file\n"
    assert result.stderr == ""


def test_status_refused(symlink: Path) -> None:
    result = run_cli("status", symlink)

    assert result.returncode == 4
    assert result.stdout == (
        f"{symlink}: refused: is a symlink, which is never followed\n"
    )
    assert result.stderr == ""


@pytest.mark.needs_procfs
def test_status_starting(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=False):
        result = run_cli("status", pidfile)

    assert result.returncode == 0
    assert result.stdout == f"{pidfile}: starting: locked, PID not written yet\n"


def test_status_json_running(running: Path) -> None:
    result = run_cli("status", "--json", running)
    data = json.loads(result.stdout)

    assert result.returncode == 0
    assert set(data) == STATUS_KEYS
    assert data["path"] == str(running)
    assert data["state"] == "running"
    assert data["pid"] == os.getpid()
    assert data["reason"] is None
    assert data["exit_code"] == 0
    assert set(data["file"]) == FILE_KEYS
    assert data["file"]["pid"] == os.getpid()
    assert data["file"]["mode"] == "0644"
    assert data["file"]["trusted"] is True


@pytest.mark.parametrize(
    ("fixture", "state", "code"),
    [("stale", "stale", 1), ("pidfile", "absent", 3), ("symlink", "refused", 4)],
)
def test_status_json_states(
    request: pytest.FixtureRequest, fixture: str, state: str, code: int
) -> None:
    value = request.getfixturevalue(fixture)
    path = value[0] if isinstance(value, tuple) else value

    result = run_cli("status", "--json", path)
    data = json.loads(result.stdout)

    assert result.returncode == code
    assert set(data) == STATUS_KEYS
    assert data["state"] == state
    assert data["exit_code"] == code
    assert data["path"] == str(path)
    assert isinstance(data["reason"], str)
    assert (data["file"] is None) == (state != "stale")


# clean


def test_clean_removes_stale(stale: tuple[Path, int]) -> None:
    path, pid = stale

    result = run_cli("clean", path)

    assert result.returncode == 0
    assert result.stdout == (
        f"{path}: removed stale PID file (process {pid} is not running)\n"
    )
    assert result.stderr == ""
    assert not os.path.lexists(path)


def test_clean_absent(pidfile: Path) -> None:
    result = run_cli("clean", pidfile)

    assert result.returncode == 0
    assert result.stdout == f"{pidfile}: no PID file\n"


def test_clean_keeps_running(running: Path) -> None:
    result = run_cli("clean", running)

    assert result.returncode == 1
    assert result.stdout == f"{running}: kept, running, PID {os.getpid()}\n"
    assert running.exists()


def test_clean_keeps_locked(pidfile: Path) -> None:
    write_file(pidfile, b"")

    with lock_holder(pidfile, write_pid=True) as holder:
        result = run_cli("clean", pidfile)

    assert result.returncode == 1
    assert result.stdout == f"{pidfile}: kept, running, PID {holder}\n"
    assert pidfile.exists()


def test_clean_rejects_untrusted(stale: tuple[Path, int]) -> None:
    path, _ = stale
    path.chmod(0o666)

    result = run_cli("clean", path)

    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"pidsafe: PID file {path}: "
        "refusing to clean it: file is writable by group and others"
    ]
    assert path.exists()


def test_clean_json_removed(stale: tuple[Path, int]) -> None:
    path, pid = stale

    result = run_cli("clean", "--json", path)
    data = json.loads(result.stdout)

    assert result.returncode == 0
    assert set(data) == STATUS_KEYS | {"removed"}
    assert data["state"] == "stale"
    assert data["pid"] == pid
    assert data["removed"] is True
    assert not os.path.lexists(path)


def test_clean_json_kept(running: Path) -> None:
    result = run_cli("clean", "--json", running)
    data = json.loads(result.stdout)

    assert result.returncode == 1
    assert data["state"] == "running"
    assert data["removed"] is False
    assert running.exists()


def test_clean_json_error(stale: tuple[Path, int]) -> None:
    path, _ = stale
    path.chmod(0o666)

    result = run_cli("clean", "--json", path)
    data = json.loads(result.stdout)

    assert result.returncode == 4
    assert set(data) == ERROR_KEYS
    assert data["error"] == "InsecurePidfile"
    assert data["path"] == str(path)


# usage


def test_no_arguments_usage_error() -> None:
    result = run_cli()

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: pidsafe ")
    assert (
        "pidsafe: error: the following arguments are required: COMMAND" in result.stderr
    )


def test_unknown_command_usage_error() -> None:
    result = run_cli("frobnicate", "/run/service.pid")

    assert result.returncode == 2
    assert result.stdout == ""
    assert "pidsafe: error: argument COMMAND: invalid choice: 'frobnicate'" in (
        result.stderr
    )


def test_missing_path_usage_error() -> None:
    result = run_cli("read")

    assert result.returncode == 2
    assert "the following arguments are required: PATH" in result.stderr


def test_version() -> None:
    result = run_cli("--version")

    assert result.returncode == 0
    assert result.stdout == f"pidsafe {pidsafe.__version__}\n"


def test_clean_json_exit_code_is_cleans(tmp_path: Path) -> None:
    path = tmp_path / "running.pid"
    path.write_text(f"{os.getpid()}\n")
    done = subprocess.run(
        [sys.executable, "-m", "pidsafe", "clean", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    data = json.loads(done.stdout)
    assert done.returncode == 1
    assert data["exit_code"] == 1
    assert data["removed"] is False


def test_stale_untrusted_line_says_so(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    directory.chmod(0o777)
    path = directory / "gone.pid"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    path.write_text(child.stdout)
    done = subprocess.run(
        [sys.executable, "-m", "pidsafe", "status", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert "stale" in done.stdout
    assert f"(untrusted file: directory {directory} is writable" in done.stdout


@pytest.mark.parametrize(
    ("command", "handler", "expected"),
    [
        ("status", "status", 4),
        ("clean", "clean_pidfile", 4),
        ("read", "read_pidfile", 1),
    ],
)
def test_unexpected_oserror_exit_code(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    handler: str,
    expected: int,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(cli, handler, broken)
    code = cli.main([command, str(tmp_path / "x.pid")])

    assert code == expected
    assert "unexpected error" in capsys.readouterr().err
