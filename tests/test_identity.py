"""Tests for process liveness."""

from __future__ import annotations

import pwd
import shlex
import subprocess
import sys

import pytest

# --- liveness behind hidepid -----------------------------------------------------


def unused_uid() -> int:
    """Return a uid with no passwd entry, to run a step as an unknown user."""
    for uid in range(61_000, 62_000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no unused uid in 61000..61999")


@pytest.mark.needs_mountns
def test_alive_behind_hidepid() -> None:
    # With /proc mounted hidepid=2, an unprivileged user sees no /proc entry
    # for another user's process, yet kill(pid, 0) succeeds.
    proc = subprocess.Popen(["sleep", "60"])
    uid = unused_uid()
    probe = (
        "import os, pidsafe\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        f"print(os.path.exists('/proc/{proc.pid}'), pidsafe.is_alive({proc.pid}))\n"
    )
    script = (
        "mount -t proc -o hidepid=2 proc /proc\n"
        f"{shlex.quote(sys.executable)} -c {shlex.quote(probe)}\n"
    )
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
