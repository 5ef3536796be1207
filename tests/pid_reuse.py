"""Give a checked process's PID to a decoy in the middle of `pidsafe.stop`.

Usage: ``unshare --pid --fork --mount-proc python pid_reuse.py DIR SEAM
[kill] [late]``

Runs as PID 1 of a private PID namespace, where nothing else starts
processes, so the next PID is predictable. A victim process writes
nothing; this script writes DIR/app.pid naming it, then calls
``pidsafe.stop`` on that file. When stop reaches SEAM ("opened" or
"signal", see `pidsafe._stop.step_hook`), the script kills and reaps the
victim, sets ``/proc/sys/kernel/ns_last_pid`` so that the next process
gets the victim's PID, and starts a decoy, which therefore has it. With
"kill", stop runs its kill fallback instead of a pidfd. With "late", the
decoy starts `LATE` seconds after the file was written, beyond the clock
resolution of the start-time rule.

Prints one JSON object: both PIDs, what stop returned or raised, and the
signals that the decoy recorded. Every child is killed before the
script exits, and the namespace ends with it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pidsafe
from pidsafe import _stop

CHILD = str(Path(__file__).with_name("signal_child.py"))
WAIT_LIMIT = 10.0
LATE = 0.2


def start_child(log: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, CHILD, str(log), "exit", "--lifetime", "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], WAIT_LIMIT)
    if not ready or not child.stdout.readline().startswith("ready"):
        raise RuntimeError(f"child {child.pid} did not start")
    return child


def received(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [line.split()[0] for line in lines if not line.startswith("exit")]


def main(directory: Path, seam: str, fallback: bool, late: bool) -> dict[str, Any]:
    victim = start_child(directory / "victim.log")
    path = directory / "app.pid"
    path.write_text(f"{victim.pid}\n")
    decoys: list[subprocess.Popen[str]] = []

    def reuse_pid(name: str) -> None:
        if name != seam or decoys:
            return
        victim.kill()
        victim.wait(WAIT_LIMIT)
        if late:
            time.sleep(LATE)
        with open("/proc/sys/kernel/ns_last_pid", "w") as stream:
            stream.write(str(victim.pid - 1))
        decoys.append(start_child(directory / "decoy.log"))

    _stop.step_hook = reuse_pid
    if fallback:
        _stop.USES_PIDFD = False  # type: ignore[misc]  # Final, patched for the test
    report: dict[str, Any] = {"victim": victim.pid}
    try:
        result = pidsafe.stop(path, schedule="TERM/2")
        report["outcome"] = result.outcome
        report["signals"] = [sent.signal.name for sent in result.signals]
    except pidsafe.PidfileError as exc:
        report["error"] = type(exc).__name__
        report["reason"] = exc.reason
    finally:
        _stop.step_hook = None
    # Give a signal that was sent time to arrive and be recorded.
    time.sleep(0.2)
    for decoy in decoys:
        report["decoy"] = decoy.pid
        report["decoy_received"] = received(directory / "decoy.log")
        decoy.kill()
        decoy.wait(WAIT_LIMIT)
    return report


if __name__ == "__main__":
    if os.getpid() != 1:
        sys.exit("pid_reuse.py must run as PID 1 of a new PID namespace")
    options = sys.argv[3:]
    outcome = main(Path(sys.argv[1]), sys.argv[2], "kill" in options, "late" in options)
    print(json.dumps(outcome))
