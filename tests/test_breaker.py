"""Failures found by probing pidsafe with odd paths, limits and mounts.

Each test pins one bug that once made pidsafe raise a bare `OSError` where
its docstrings promise a `PidfileError`, misjudge a live process, or reject
a valid setting. Steps that need another user run through ``_users.py``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import pidsafe
from _users import SOURCE_DIR, User, interpreter_for, run_as, unprivileged_users
from bounded import call_bounded
from child_process import WAIT_LIMIT
from pidsafe import _process, _status


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    with unprivileged_users(1) as created:
        yield created[0]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A sticky directory with mode 1777 that every user can reach."""
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="pidsafe-breaker-")))
    try:
        base.chmod(0o755)
        shared = base / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        yield shared
    finally:
        shutil.rmtree(base)


@pytest.mark.needs_users
def test_unsearchable_cwd_relative_path(user: User, shared: Path) -> None:
    # A process may sit in a directory it can no longer search. The kernel
    # then fails every relative lookup with EACCES, and so must pidsafe,
    # as a PidfilePermissionError, not as a bare PermissionError.
    workdir = shared / "cwd"
    run_as(
        user,
        ["mkdir", str(workdir), "0755"],
        ["write", str(workdir / "a.pid"), "1\n", "0644"],
    )

    def call(function: str) -> list[object]:
        return ["pidsafe", SOURCE_DIR, function, "a.pid"]

    read, remove, clean, state = run_as(
        user,
        ["chdir", str(workdir)],
        ["chmod", str(workdir), "0000"],
        call("read_pidfile"),
        call("remove_pidfile"),
        call("clean_pidfile"),
        call("status"),
    )[2:]

    for result in (read, remove, clean):
        assert result["error"] == "PidfilePermissionError", result
        assert result["message"].startswith("PID file a.pid: "), result
        assert f"searching the current directory {workdir}" in result["message"]
    assert state["state"] == "unknown"
    assert f"searching the current directory {workdir}" in state["reason"]


# A child that lowers RLIMIT_NOFILE, opens descriptors until none is left,
# closes argv[1] of them and calls pidsafe.<argv[2]>(argv[3]). It prints the
# exception's class and message, or "returned" and the result.
_WITH_FEW_FDS = """
import os, resource, sys
import pidsafe
from pidsafe import _process, _status
pidsafe.pid_max()
pidsafe._process.procfs_available()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
for _ in range(int(sys.argv[1])):
    os.close(held.pop())
try:
    result = getattr(pidsafe, sys.argv[2])(sys.argv[3])
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("returned", result)
"""


def call_with_free_fds(free: int, function: str, path: Path) -> str:
    """Return what pidsafe.<function>(path) did with `free` fds left."""
    result = subprocess.run(
        [sys.executable, "-c", _WITH_FEW_FDS, str(free), function, str(path)],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=True,
    )
    return result.stdout.strip()


@pytest.mark.parametrize(
    "function", ["read_pidfile", "remove_pidfile", "clean_pidfile", "status"]
)
def test_no_free_fd_named_error(piddir: Path, function: str) -> None:
    # With no descriptor left even "/" cannot be opened. That is EMFILE, a
    # failure the docstrings promise as a PidfileError naming the path.
    path = piddir / "app.pid"
    path.write_text(f"{os.getpid()}\n")

    outcome = call_with_free_fds(0, function, path)

    if function == "status":
        assert outcome.startswith("returned Status(state='unknown'"), outcome
    else:
        assert outcome.startswith(f"PidfileError PID file {path}: "), outcome
    assert "cannot open directory /: Too many open files" in outcome
    assert path.exists()


@pytest.mark.needs_procfs
@pytest.mark.needs_linux
@pytest.mark.parametrize("function", ["read_pidfile", "clean_pidfile"])
def test_read_error_named(function: str) -> None:
    # /proc/self/mem is a regular file, owned by the caller in directories
    # owned by root or the caller, so it passes every check before read(),
    # which fails with EIO at offset 0, as a failing disk would.
    path = "/proc/self/mem"

    with pytest.raises(pidsafe.PidfileError) as caught:
        getattr(pidsafe, function)(path)

    assert caught.value.errno == errno.EIO
    assert str(caught.value) == f"PID file {path}: cannot be read: Input/output error"


@pytest.mark.needs_procfs
@pytest.mark.needs_linux
def test_read_error_status_unknown() -> None:
    found = pidsafe.status("/proc/self/mem")

    assert found.exit_code == 4
    assert found.reason == "cannot be read: Input/output error"


def test_clean_liveness_error_named(
    piddir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # is_alive fails closed by raising, as with EACCES from /proc mounted
    # with hidepid=1. clean_pidfile must keep the file and say why.
    path = piddir / "app.pid"
    path.write_text(f"{os.getpid()}\n")

    def denied(pid: int, mtime_ns: int) -> bool:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_status, "check_writer", denied)
    with pytest.raises(pidsafe.PidfileError) as caught:
        pidsafe.clean_pidfile(path)

    assert caught.value.errno == errno.EACCES
    assert str(caught.value) == (
        f"PID file {path}: cannot check process {os.getpid()}: Permission denied"
    )
    assert path.exists()


def test_clean_lock_error_named(piddir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # flock fails with ENOLCK on some network file systems.
    path = piddir / "app.pid"
    path.write_text(f"{os.getpid()}\n")

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_status.fcntl, "flock", no_locks)
    with pytest.raises(pidsafe.PidfileError) as caught:
        pidsafe.clean_pidfile(path)

    assert caught.value.errno == errno.ENOLCK
    assert str(caught.value) == f"PID file {path}: cannot lock it: No locks available"
    assert path.exists()


# Run as root in fresh mount and PID namespaces, so that the /proc mounted
# here is a new instance that no process outside them sees. Starts a root
# process, then asks as the unprivileged user (argv[1], argv[2]) whether
# it is alive, with the interpreter argv[3].
_HIDDEN_PROC = """
import subprocess, sys
uid, gid, interpreter, source = sys.argv[1:]
subprocess.run(["mount", "-t", "proc", "-o", "hidepid=2", "proc", "/proc"], check=True)
sleeper = subprocess.Popen(["sleep", "30"])
probe = f"import sys; sys.path.insert(0, {source!r}); import pidsafe; "
probe += f"print(pidsafe.is_alive({sleeper.pid}))"
try:
    result = subprocess.run(
        [interpreter, "-I", "-c", probe],
        user=int(uid), group=int(gid), extra_groups=[], cwd="/",
        capture_output=True, text=True, timeout=20, check=True,
    )
    print(result.stdout.strip())
finally:
    sleeper.kill()
    sleeper.wait()
"""


@pytest.mark.needs_users
@pytest.mark.needs_namespaces
def test_hidden_proc_process_alive(user: User) -> None:
    # With /proc mounted hidepid=2, another user's /proc/<pid> does not
    # exist for the caller, while kill(pid, 0) fails with EPERM because the
    # process does. Reading the missing directory as "exited" would call
    # a running service stale; liveness must fail closed instead.
    interpreter = interpreter_for(user.uid, user.gid)
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
    argv += [sys.executable, "-c", _HIDDEN_PROC, str(user.uid), str(user.gid)]
    argv += [interpreter, SOURCE_DIR]

    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=WAIT_LIMIT * 3, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_hidden_proc_entry_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same case through seams: kill(pid, 0) says the process exists but
    # /proc has no entry for it, and neither changes on a second look.
    def exists_elsewhere(pid: int, signal: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(_process, "procfs_available", lambda: True)
    monkeypatch.setattr(_process.os, "kill", exists_elsewhere)
    monkeypatch.setattr(_process, "read_proc_status", lambda pid: None)

    assert pidsafe.is_alive(1) is True


def test_exited_between_kill_and_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    # A process that exits after kill(pid, 0) and before /proc is read is
    # dead: the second kill(pid, 0) fails with ESRCH.
    answers = [None, ProcessLookupError(errno.ESRCH, "No such process")]

    def kill(pid: int, signal: int) -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    monkeypatch.setattr(_process, "procfs_available", lambda: True)
    monkeypatch.setattr(_process.os, "kill", kill)
    monkeypatch.setattr(_process, "read_proc_status", lambda pid: None)

    assert pidsafe.is_alive(1) is False
    assert answers == []


def test_runtime_dir_trailing_slash(tmp_path: Path) -> None:
    # Shells and unit files often write directories with a trailing slash,
    # and XDG_RUNTIME_DIR=/run/user/1000/ is as valid as without it.
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    target = tmp_path / "custom"

    found = pidsafe.runtime_dir("app", environ={"XDG_RUNTIME_DIR": f"{xdg}/"})
    override = pidsafe.runtime_dir(
        "app", env_var="APP_DIR", environ={"APP_DIR": f"{target}//"}
    )

    assert found == xdg / "app"
    assert found.is_dir()
    assert override == target
    assert target.is_dir()


def test_runtime_dir_mkdir_error_named(tmp_path: Path) -> None:
    # mkdir fails with ENAMETOOLONG here, as it fails with EACCES or EROFS
    # for an override in a directory the caller may not write.
    target = tmp_path / ("x" * 300)
    environ = {"APP_DIR": str(target)}

    with pytest.raises(pidsafe.RuntimeDirError) as caught:
        pidsafe.runtime_dir("app", env_var="APP_DIR", environ=environ)

    assert caught.value.errno == errno.ENAMETOOLONG
    assert caught.value.path == str(target)
    assert caught.value.reason == (
        f"$APP_DIR={target} cannot be created: File name too long"
    )


def test_many_dotdot_components_fast(piddir: Path) -> None:
    # The kernel rejects such a path at once with ENAMETOOLONG. pidsafe
    # walks it one component at a time, and must do so in linear time:
    # taking each component from the front of a list made 500,000 ".."
    # take minutes.
    path = "../" * 500_000 + str(piddir / "app.pid").lstrip("/")
    (piddir / "app.pid").write_text(f"{os.getpid()}\n")

    record = call_bounded(pidsafe.read_pidfile, path)

    assert isinstance(record, pidsafe.PidfileRecord), record
    assert record.pid == os.getpid()


def test_pid_directory_nul_name(piddir: Path) -> None:
    # PidDirectory.read and remove promise the errors of read_pidfile and
    # remove_pidfile, which reject a NUL byte with a PidfileError.
    with pidsafe.PidDirectory(piddir) as directory:
        for method in (directory.read, directory.remove):
            with pytest.raises(pidsafe.PidfileError) as caught:
                method("a\0b")

            assert caught.value.errno == errno.EINVAL
            assert caught.value.reason == "path contains a NUL byte"
        assert directory.read_safely("a\0b") is None
