"""Failures found by probing pidsafe with odd paths, limits and mounts.

Each test pins one bug that once made pidsafe raise a bare `OSError` where
its docstrings promise a `PidfileError`, misjudge a live process, or reject
a valid setting. Steps that need another user run through ``_users.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from _users import SOURCE_DIR, User, run_as, unprivileged_users


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
        assert result["message"].startswith("pid file a.pid: "), result
        assert f"searching the current directory {workdir}" in result["message"]
    assert state["state"] == "unknown"
    assert f"searching the current directory {workdir}" in state["reason"]
