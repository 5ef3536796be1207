"""Show pidsafe on a real process and on the files an attacker would plant.

The demo starts a background process that writes its own PID file, checks
it with ``pidsafe status``, then puts a symlink, a FIFO, a file containing
``-1`` and a 1 MiB file at the same path in turn and shows that each is
rejected at once with its reason. It stops the process, shows the stale
file, cleans it, and removes everything it created.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIDFILE = "demo.pid"
# Each pidsafe command must return well within this; a hang is a failure.
COMMAND_TIMEOUT = 10.0
# Anything slower than this would not count as "at once".
PROMPT_SECONDS = 2.0


def pidsafe_command() -> list[str]:
    found = shutil.which("pidsafe")
    return [found] if found else [sys.executable, "-m", "pidsafe"]


def run(workdir: Path, *args: str) -> int:
    """Run ``pidsafe ARGS`` in `workdir`, echoing it and its output."""
    print(f"$ pidsafe {' '.join(args)}")
    started = time.monotonic()
    done = subprocess.run(
        [*pidsafe_command(), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    for line in (done.stdout + done.stderr).splitlines():
        print(f"  {line}")
    speed = "at once" if elapsed < PROMPT_SECONDS else f"after {elapsed:.1f} s"
    print(f"  (exit {done.returncode}, returned {speed})")
    return done.returncode


def start_service(workdir: Path) -> subprocess.Popen[bytes]:
    """Start a process that writes its PID file and then sleeps."""
    code = (
        "import os, time\n"
        f"with open({PIDFILE!r}, 'w') as f: f.write(f'{{os.getpid()}}\\n')\n"
        "time.sleep(300)\n"
    )
    service = subprocess.Popen([sys.executable, "-c", code], cwd=workdir)
    deadline = time.monotonic() + COMMAND_TIMEOUT
    while not (workdir / PIDFILE).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the demo service did not write its PID file")
        time.sleep(0.02)
    return service


def plant(workdir: Path, kind: str) -> None:
    """Replace the PID file's name with what an attacker would plant."""
    target = workdir / PIDFILE
    if target.exists() or target.is_symlink():
        target.unlink()
    if kind == "a symlink to the real PID file":
        target.symlink_to("service.pid")
    elif kind == "a FIFO with no writer":
        os.mkfifo(target)
    elif kind == "a file containing -1":
        target.write_text("-1\n")
    elif kind == "a file of 1 MiB":
        target.write_bytes(b"1" * (1 << 20))


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="pidsafe-demo-"))
    service = None
    try:
        print("A real background process writes its PID file:")
        service = start_service(workdir)
        run(workdir, "status", PIDFILE)
        run(workdir, "read", PIDFILE)
        os.rename(workdir / PIDFILE, workdir / "service.pid")

        for kind in (
            "a symlink to the real PID file",
            "a FIFO with no writer",
            "a file containing -1",
            "a file of 1 MiB",
        ):
            print(f"\nAn attacker puts {kind} at {PIDFILE}:")
            plant(workdir, kind)
            run(workdir, "status", PIDFILE)
        (workdir / PIDFILE).unlink()
        os.rename(workdir / "service.pid", workdir / PIDFILE)

        print(f"\nThe process is stopped (SIGTERM to PID {service.pid}):")
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=COMMAND_TIMEOUT)
        run(workdir, "status", PIDFILE)
        run(workdir, "clean", PIDFILE)
        run(workdir, "status", PIDFILE)
    finally:
        if service is not None and service.poll() is None:
            service.kill()
            service.wait(timeout=COMMAND_TIMEOUT)
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
