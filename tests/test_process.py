"""is_alive: live processes only, never threads, zombies or bad PIDs."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from child_process import (
    PRINT_THREAD_ID,
    WAIT_FOR_STDIN,
    python_child,
    reaped_pid,
    zombie,
)
from pidsafe import is_alive, pid_max


def proc_state(pid: int) -> str:
    """Return the one-letter state of `pid` from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name in brackets may contain spaces, so split after it.
    return text.rsplit(")", 1)[1].split()[0]


def test_own_pid_alive() -> None:
    assert is_alive(os.getpid()) is True


def test_running_child_alive() -> None:
    with python_child(WAIT_FOR_STDIN) as (child, line):
        assert line == "ready"

        assert is_alive(child.pid) is True


def test_reaped_child_dead() -> None:
    pid = reaped_pid()

    assert is_alive(pid) is False


@pytest.mark.needs_procfs
def test_zombie_dead() -> None:
    with zombie() as pid:
        # kill(pid, 0) succeeds for a zombie, so only /proc can tell.
        os.kill(pid, 0)
        assert proc_state(pid) == "Z"

        assert is_alive(pid) is False


@pytest.mark.needs_procfs
def test_thread_of_child_not_process() -> None:
    with python_child(PRINT_THREAD_ID) as (child, line):
        thread_id = int(line)
        assert thread_id != child.pid
        # The kernel accepts a thread ID wherever it accepts a PID.
        os.kill(thread_id, 0)

        assert is_alive(thread_id) is False
        assert is_alive(child.pid) is True


@pytest.mark.needs_procfs
def test_own_thread_not_process() -> None:
    started = threading.Event()
    stop = threading.Event()
    thread_ids: list[int] = []

    def run() -> None:
        thread_ids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(10)
        assert is_alive(thread_ids[0]) is False
    finally:
        stop.set()
        worker.join(10)


@pytest.mark.parametrize("pid", [0, -1, pid_max() + 1, 2**64])
def test_out_of_range_pid_raises(pid: int) -> None:
    message = f"PID {pid} is outside the range 1..{pid_max()}"

    with pytest.raises(ValueError, match=re.escape(message)):
        is_alive(pid)


@pytest.mark.parametrize(
    ("pid", "type_name"),
    [
        (True, "bool"),
        (False, "bool"),
        ("42", "str"),
        (42.0, "float"),
        (None, "NoneType"),
    ],
)
def test_non_int_pid_raises(pid: Any, type_name: str) -> None:
    with pytest.raises(TypeError, match=f"PID must be an int, not {type_name}"):
        is_alive(pid)
