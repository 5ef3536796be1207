"""Throwaway unprivileged users, and running steps as them.

The attack tests run as root, the victim, and need principals that root
does not trust. `unprivileged_users` creates system users with unique
names and deletes them afterwards, even when a test fails. `run_as` and
`started_as` run the steps in ``_as_user.py`` as one of those users in a
child process. Every child is bounded by a timeout and is killed by its
PID when it overruns.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pidsafe

#: Seconds that one batch of steps may take before its child is killed.
STEP_TIMEOUT = 20.0

_ADMIN_TIMEOUT = 30.0
_STEPS_SOURCE = Path(__file__).with_name("_as_user.py").read_text()
# The directory that contains the pidsafe package, for steps that import it.
SOURCE_DIR = str(Path(pidsafe.__file__).resolve().parent.parent)


class User(NamedTuple):
    name: str
    uid: int
    gid: int


def _run_admin(argv: list[str]) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=_ADMIN_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {result.returncode}: "
            f"{result.stderr.strip()}"
        )


def create_user() -> User:
    """Create a system user with its own group, no home and no login shell."""
    name = f"pidsafe-atk-{secrets.token_hex(4)}"
    _run_admin(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ]
    )
    entry = pwd.getpwnam(name)
    return User(name, entry.pw_uid, entry.pw_gid)


def delete_user(user: User) -> None:
    """Delete the user and, with USERGROUPS_ENAB, its group."""
    _run_admin(["userdel", user.name])


@contextmanager
def unprivileged_users(count: int) -> Iterator[tuple[User, ...]]:
    """Create `count` users for the duration of the block, then delete them.

    Deletes every user that was created, even when creating a later one or
    the block fails, and raises the first deletion error after trying all.
    """
    created: list[User] = []
    try:
        for _ in range(count):
            created.append(create_user())
        yield tuple(created)
    finally:
        failures: list[Exception] = []
        for user in reversed(created):
            try:
                delete_user(user)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                failures.append(exc)
        if failures:
            raise failures[0]


def _candidate_interpreters() -> list[str]:
    candidates = [sys.executable, os.path.realpath(sys.executable)]
    candidates += ["/usr/local/bin/python3", "/usr/bin/python3"]
    return list(dict.fromkeys(candidates))


@functools.cache
def interpreter_for(uid: int, gid: int) -> str:
    """Return a Python 3.9+ interpreter that the user can run.

    The test interpreter often lives under a directory that other users
    cannot search, such as a pyenv build under /root. The steps then run on
    the system interpreter, because they need only the standard library and
    pidsafe's source.
    """
    probe = "import sys; sys.exit(sys.version_info < (3, 9))"
    tried: list[str] = []
    for candidate in _candidate_interpreters():
        try:
            result = subprocess.run(
                [candidate, "-I", "-c", probe],
                user=uid,
                group=gid,
                extra_groups=[],
                cwd="/",
                env=_environment(),
                capture_output=True,
                timeout=STEP_TIMEOUT,
                check=False,
            )
        except OSError as exc:
            tried.append(f"{candidate}: {exc.strerror}")
            continue
        if result.returncode == 0:
            return candidate
        tried.append(f"{candidate}: exit status {result.returncode}")
    raise RuntimeError(
        f"no Python 3.9+ interpreter that uid {uid} can run: {'; '.join(tried)}"
    )


def _environment() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}


def _argv(user: User, steps: tuple[list[Any], ...]) -> list[str]:
    interpreter = interpreter_for(user.uid, user.gid)
    return [interpreter, "-I", "-B", "-c", _STEPS_SOURCE, json.dumps(steps)]


def _popen_arguments(user: User) -> dict[str, Any]:
    return {
        "user": user.uid,
        "group": user.gid,
        "extra_groups": [],
        "umask": 0o022,
        "cwd": "/",
        "env": _environment(),
        "text": True,
    }


def _results(output: str, stderr: str, status: int, user: User) -> list[Any]:
    if status != 0:
        raise RuntimeError(
            f"steps as {user.name} (uid {user.uid}) failed with status "
            f"{status}: {stderr.strip()}"
        )
    results: list[Any] = json.loads(output.splitlines()[-1])
    return results


def run_as(user: User, *steps: list[Any], timeout: float = STEP_TIMEOUT) -> list[Any]:
    """Run `steps` as `user` and return their results; raise if one fails.

    Raises `subprocess.TimeoutExpired` after killing the child when the steps
    take longer than `timeout` seconds.
    """
    result = subprocess.run(
        _argv(user, steps),
        capture_output=True,
        timeout=timeout,
        check=False,
        **_popen_arguments(user),
    )
    return _results(result.stdout, result.stderr, result.returncode, user)


@contextmanager
def started_as(user: User, *steps: list[Any]) -> Iterator[subprocess.Popen[str]]:
    """Run `steps` as `user` in the background for the duration of the block.

    Pair with `finish` to collect the results. A child still running when
    the block ends, for example because the test failed, is killed by its
    PID and reaped.
    """
    process = subprocess.Popen(
        _argv(user, steps),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **_popen_arguments(user),
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            process.communicate()


def wait_for_line(
    process: subprocess.Popen[str], expected: str, timeout: float
) -> None:
    """Wait until the child prints the line `expected`; raise on timeout.

    Reads the pipe's file descriptor one byte at a time, so that no output
    stays in a Python buffer where `finish` would not see it. Each byte is
    awaited with a deadline, so a child that never prints cannot hang the
    test.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while True:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not readable:
            raise TimeoutError(f"child {process.pid} did not print {expected!r}")
        byte = os.read(fd, 1)
        if not byte:
            raise RuntimeError(f"child {process.pid} exited before {expected!r}")
        if byte != b"\n":
            line += byte
        elif line.decode() == expected:
            return
        else:
            line = b""


def finish(process: subprocess.Popen[str], user: User, timeout: float) -> list[Any]:
    """Wait for a child from `started_as` and return its step results.

    Kills the child by its PID and raises `subprocess.TimeoutExpired` when
    it runs longer than `timeout` seconds.
    """
    try:
        output, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return _results(output, stderr, process.returncode, user)
