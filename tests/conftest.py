"""Shared fixtures and capability-based skip markers.

Every skip for a missing capability is declared here, with its reason. When
the environment variable PIDSAFE_REQUIRE is set to a comma-separated list of
capability names (CI sets it), a test that would skip for one of them fails
instead, so a CI run cannot pass by silently skipping the attack tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_USERADD = (
    shutil.which("useradd") is not None and shutil.which("userdel") is not None
)
HAS_PROCFS = os.path.exists("/proc/self/stat")
HAS_PIDFD = hasattr(os, "pidfd_open")
HAS_UNSHARE = shutil.which("unshare") is not None


def _can_unshare() -> bool:
    """Return whether root may create mount and PID namespaces here."""
    if not IS_ROOT or shutil.which("unshare") is None:
        return False
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork"]
    try:
        result = subprocess.run(
            [*argv, "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


HAS_NAMESPACES = _can_unshare()

# name -> (available, reason shown when it is not)
CAPABILITIES: dict[str, tuple[bool, str]] = {
    "root": (IS_ROOT, "needs root to create users and files owned by them"),
    "users": (
        IS_ROOT and HAS_USERADD,
        "needs root and useradd/userdel to run attacker steps as another user",
    ),
    "procfs": (HAS_PROCFS, "needs /proc for thread, zombie and start-time checks"),
    "pidfd": (HAS_PIDFD, "needs os.pidfd_open (Linux 5.3+, Python 3.9+)"),
    "linux": (sys.platform.startswith("linux"), "Linux-only behaviour"),
    "mountns": (
        IS_ROOT and HAS_UNSHARE,
        "needs root and unshare(1) to mount file systems (a read-only bind, "
        "a full tmpfs, /proc with hidepid) in a private mount namespace",
    ),
    "namespaces": (
        HAS_NAMESPACES,
        "needs root and unshare(1) to mount a private /proc in new mount "
        "and PID namespaces",
    ),
}


def _required() -> set[str]:
    text = os.environ.get("PIDSAFE_REQUIRE", "")
    return {name.strip() for name in text.split(",") if name.strip()}


def pytest_configure(config: pytest.Config) -> None:
    for name, (_, reason) in CAPABILITIES.items():
        config.addinivalue_line("markers", f"needs_{name}: {reason}")
    unknown = _required() - CAPABILITIES.keys()
    if unknown:
        raise pytest.UsageError(
            f"PIDSAFE_REQUIRE names unknown capabilities: {sorted(unknown)}"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    required = _required()
    for marker in item.iter_markers():
        if not marker.name.startswith("needs_"):
            continue
        name = marker.name[len("needs_") :]
        available, reason = CAPABILITIES[name]
        if available:
            continue
        if name in required:
            pytest.fail(
                f"capability {name!r} is missing but PIDSAFE_REQUIRE "
                f"requires it: {reason}"
            )
        pytest.skip(reason)


@pytest.fixture
def piddir(tmp_path: Path) -> Iterator[Path]:
    """A private directory (mode 0700, owned by the caller) for PID files."""
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    return directory
