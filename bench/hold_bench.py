"""Time one acquire-and-release cycle of a PID file against other packages.

Usage:
    python bench/hold_bench.py [--number N] [--repeat R] [--no-strace]

Every contender runs in this one process on files in one private temporary
directory, and each reported time is the median over R repeats of N
cycles. Contenders take turns within each repeat so that a slow patch of
the machine hits all of them. Ratios are against the fastest contender in
the same run, because absolute times move between runs on a shared machine.

System calls per cycle come from ``strace -f -c``: the script runs itself
under strace once with the cycles and once without, and the difference
divided by the cycle count is the cost of one cycle. Runs without strace
installed skip that column.

The contenders come from the bench extra (``pip install -e '.[bench]'``):

- pidsafe.PidFile: secure walk, flock, PID written, unlink by inode.
- pid.PidFile: flock, PID written, unlink by path after closing.
- portalocker.PidFileLock: flock on a sidecar file, PID written, unlink.
- filelock.FileLock: flock only, and the file stays.
- portalocker.Lock: flock only, and the file stays.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

import filelock
import pid
import portalocker

import pidsafe
from pidsafe._path import open_parent


class Contender(NamedTuple):
    name: str
    writes_pid: bool
    removes_file: bool
    make_cycle: Callable[[str], Callable[[], None]]


def _pidsafe_cycle(directory: str) -> Callable[[], None]:
    pidfile = pidsafe.PidFile(os.path.join(directory, "pidsafe.pid"))

    def cycle() -> None:
        pidfile.acquire()
        pidfile.release()

    return cycle


def _pid_cycle(directory: str) -> Callable[[], None]:
    pidfile = pid.PidFile(
        pidname="pid",
        piddir=directory,
        register_term_signal_handler=False,
        register_atexit=False,
    )

    def cycle() -> None:
        pidfile.create()
        pidfile.close()

    return cycle


def _portalocker_pidfile_cycle(directory: str) -> Callable[[], None]:
    lock = portalocker.PidFileLock(os.path.join(directory, "portalocker.pid"))

    def cycle() -> None:
        lock.acquire()
        lock.release()

    return cycle


def _filelock_cycle(directory: str) -> Callable[[], None]:
    lock = filelock.FileLock(os.path.join(directory, "filelock.lock"))

    def cycle() -> None:
        lock.acquire()
        lock.release()

    return cycle


def _portalocker_lock_cycle(directory: str) -> Callable[[], None]:
    lock = portalocker.Lock(os.path.join(directory, "portalocker.lock"), "a")

    def cycle() -> None:
        lock.acquire()
        lock.release()

    return cycle


CONTENDERS = [
    Contender("pidsafe.PidFile", True, True, _pidsafe_cycle),
    Contender("pid.PidFile", True, True, _pid_cycle),
    Contender("portalocker.PidFileLock", True, True, _portalocker_pidfile_cycle),
    Contender("filelock.FileLock", False, False, _filelock_cycle),
    Contender("portalocker.Lock", False, False, _portalocker_lock_cycle),
]


def _walk_cycle(directory: str) -> Callable[[], None]:
    path = os.path.join(directory, "pidsafe.pid")

    def cycle() -> None:
        parent, _, _ = open_parent(path)
        os.close(parent.fd)

    return cycle


# Not a contender: the secure directory walk that starts every
# pidsafe.PidFile.acquire, timed alone to show its share of the cycle.
WALK = "pidsafe directory walk only"


def time_contenders(directory: str, number: int, repeat: int) -> dict[str, float]:
    """Return the median seconds per cycle of each contender and of WALK."""
    cycles = {c.name: c.make_cycle(directory) for c in CONTENDERS}
    cycles[WALK] = _walk_cycle(directory)
    samples: dict[str, list[float]] = {name: [] for name in cycles}
    for cycle in cycles.values():
        cycle()  # warm up imports and caches
    for _ in range(repeat):
        for name, cycle in cycles.items():
            started = time.perf_counter()
            for _ in range(number):
                cycle()
            samples[name].append((time.perf_counter() - started) / number)
    return {name: statistics.median(times) for name, times in samples.items()}


def _strace_total(name: str, cycles: int, parent: str | None) -> int:
    """Return the system calls that one child run of `cycles` cycles makes."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as report:
        command = [
            "strace",
            "-f",
            "-c",
            "-o",
            report.name,
            sys.executable,
            __file__,
            "--only",
            name,
            "--cycles",
            str(cycles),
        ]
        if parent is not None:
            command += ["--dir", parent]
        subprocess.run(command, check=True, timeout=300, stdout=subprocess.DEVNULL)
        text = report.read()
    match = re.search(r"^\S+\s+\S+\s+(?:\S+\s+)?(\d+)\s+(?:\d+\s+)?total$", text, re.M)
    if match is None:
        raise RuntimeError(f"no total line in strace's report:\n{text}")
    return int(match.group(1))


def count_syscalls(name: str, cycles: int, parent: str | None) -> float:
    """Return the system calls of one cycle of contender `name`."""
    with_cycles = _strace_total(name, cycles, parent)
    without = _strace_total(name, 0, parent)
    return (with_cycles - without) / cycles


def run_only(name: str, cycles: int, parent: str | None) -> None:
    """Run `cycles` cycles of one contender, for strace to count."""
    directory = tempfile.mkdtemp(dir=parent)
    try:
        contender = next(c for c in CONTENDERS if c.name == name)
        cycle = contender.make_cycle(directory)
        for _ in range(cycles):
            cycle()
    finally:
        shutil.rmtree(directory)


def _file_system(path: str) -> str:
    """Return the type of the file system holding `path`, from /proc/mounts."""
    try:
        with open("/proc/self/mounts") as stream:
            mounts = [line.split() for line in stream]
    except OSError:
        return "an unknown file system"
    best = ("", "unknown")
    for fields in mounts:
        point, kind = fields[1], fields[2]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, kind)
    return f"{best[1]} ({best[0]})"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="cycles per repeat")
    parser.add_argument("--repeat", type=int, default=15, help="repeats per contender")
    parser.add_argument(
        "--dir",
        default=None,
        help="parent of the private directory for the files (default: the "
        "system temp dir); PID files usually live on a tmpfs such as /run",
    )
    parser.add_argument(
        "--no-strace", action="store_true", help="skip counting system calls"
    )
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is not None:
        run_only(args.only, args.cycles, args.dir)
        return

    directory = tempfile.mkdtemp(dir=args.dir)  # mode 0700: pidsafe trusts it
    try:
        medians = time_contenders(directory, args.number, args.repeat)
        file_system = _file_system(directory)
    finally:
        shutil.rmtree(directory)
    use_strace = not args.no_strace and shutil.which("strace") is not None
    walk = medians.pop(WALK)
    fastest = min(medians.values())

    print(
        f"Python {platform.python_version()} on {platform.system()} "
        f"{platform.release()}, {os.cpu_count()} CPUs, files on {file_system}; "
        f"median of {args.repeat} x {args.number} cycles"
    )
    print()
    print("| contender | writes PID | removes file | µs per cycle | ratio | syscalls |")
    print("|---|---|---|---:|---:|---:|")
    for contender in CONTENDERS:
        seconds = medians[contender.name]
        calls = (
            f"{count_syscalls(contender.name, 1000, args.dir):.0f}"
            if use_strace
            else "n/a"
        )
        print(
            f"| {contender.name} | {_yes(contender.writes_pid)} "
            f"| {_yes(contender.removes_file)} | {seconds * 1e6:.1f} "
            f"| {seconds / fastest:.2f} | {calls} |"
        )
    print()
    print(
        f"Of pidsafe.PidFile's cycle, the secure directory walk alone takes "
        f"{walk * 1e6:.1f} µs."
    )


if __name__ == "__main__":
    main()
