"""Stop the same processes with start-stop-daemon and with pidsafe, side by side.

Usage (as root, from the repository root):
    python bench/stop_bench.py [--repeat N] [--json FILE]

Each case starts fresh processes that run ``tests/signal_child.py``, so
every process records the signals it catches, and writes a PID file for
them. Then it runs ``start-stop-daemon --stop --pidfile P --retry S
--remove-pidfile`` and ``pidsafe stop P --retry S`` against equal setups,
alternating the tools. A third contender calls ``pidsafe.stop`` in this
process, which shows when pidsafe notices an exit without the time the
``pidsafe`` command's interpreter takes to start and shut down.

Each run records the exit code and which process received which signal.
SIGKILL comes from the exit status, because it cannot be caught. It also
records two times. The first runs from the process's exit to the removal
of the PID file, seen through inotify: both tools remove the file as
soon as they notice the exit. The second runs from the exit to the
command's return. The exit time is the timestamp the process writes just
before it exits, or, for a process killed by SIGKILL, the moment a
thread of this script saw the process's pidfd become readable, which the
kernel does when the process exits. The thread then reaps the process at
once, as init would. All times are CLOCK_MONOTONIC.

Every case is built so that a wrong decision can only hit a process this
script started: a recycled PID and a thread ID name decoys, and the
untrusted file names a decoy run by a throwaway user. The file containing
-1 is given to pidsafe only inside a private PID namespace that holds
nothing but a decoy. start-stop-daemon is not run on it, because it
passes -1 to kill(), which asks the kernel to signal every process the
caller may signal (see bench/README.md).

The script creates and deletes two unprivileged users with useradd and
userdel, as tests/_users.py does, and kills every process it started, by
its PID, before it exits.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import platform
import random
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, NamedTuple

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import pidsafe  # noqa: E402
from _users import User, interpreter_for, run_as, unprivileged_users  # noqa: E402
from pidsafe._process import start_time  # noqa: E402

CHILD_SOURCE = (TESTS / "signal_child.py").read_text()
SSD = "/usr/sbin/start-stop-daemon"
WAIT_LIMIT = 10.0
COMMAND_LIMIT = 60.0
SECOND = 1_000_000_000
#: Seconds a service takes to clean up after SIGTERM in the "cleanup" case:
#: drawn per run from CLEANUP to CLEANUP + POLL_CYCLE, so that the exit
#: falls at a random point of start-stop-daemon's 20 ms poll cycle.
CLEANUP = 0.1
POLL_CYCLE = 0.02
_file_numbers = itertools.count()

# From <sys/inotify.h>: the event header is wd, mask, cookie and len.
_IN_DELETE = 0x200
_EVENT_HEADER = struct.Struct("iIII")


class RemovalWatch:
    """Note when each name is removed from a directory, through inotify.

    A thread reads the events and stamps them with CLOCK_MONOTONIC. Use it
    only while the main thread blocks, so that the stamp is not delayed
    waiting for the GIL.
    """

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        watch = libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_DELETE)
        if watch < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self.removed: dict[str, float] = {}
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            stamp = time.monotonic()
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = data[start : start + length].rstrip(b"\0").decode()
                self.removed.setdefault(name, stamp)
                offset = start + length

    def close(self) -> None:
        self.running = False
        self.thread.join(WAIT_LIMIT)
        os.close(self.fd)


class Process:
    """A process this script started; a thread notes its exit and reaps it."""

    def __init__(
        self,
        base: Path,
        role: str,
        mode: str,
        *options: str,
        user: User | None = None,
    ) -> None:
        self.role = role
        self.log = base / f"{role}-{time.monotonic_ns()}.log"
        self.log.touch(mode=0o600)
        extra: dict[str, Any] = {}
        interpreter = sys.executable
        if user is not None:
            os.chown(self.log, user.uid, user.gid)
            interpreter = interpreter_for(user.uid, user.gid)
            extra = {"user": user.uid, "group": user.gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [interpreter, "-c", CHILD_SOURCE, str(self.log), mode, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
            **extra,
        )
        self.ready = self._read_ready()
        self.pidfd = os.pidfd_open(self.pid)
        self.exit_seen_at: float | None = None
        self.reaped_at: float | None = None
        self.reaper = threading.Thread(target=self._reap, daemon=True)
        self.reaper.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_ready(self) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], WAIT_LIMIT)
        if not ready:
            self.process.kill()
            raise TimeoutError(f"{self.role} {self.pid} did not start")
        return self.process.stdout.readline().strip()

    def _reap(self) -> None:
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        poller.poll()
        self.exit_seen_at = time.monotonic()
        self.process.wait()
        self.reaped_at = time.monotonic()
        os.close(self.pidfd)

    def received(self) -> list[str]:
        """Signals the process received: its record, then SIGKILL if killed."""
        names = []
        for line in self.log.read_text().splitlines():
            name = line.split()[0]
            if name != "exit":
                names.append(name)
        if self.process.returncode == -9:
            names.append("SIGKILL")
        return names

    def exited_at(self) -> float | None:
        """When the process exited: its own timestamp, else its pidfd's."""
        for line in self.log.read_text().splitlines():
            name, stamp = line.split()
            if name == "exit":
                return float(stamp)
        return self.exit_seen_at

    def finish(self) -> None:
        """Kill the process by its PID if it still runs, and wait for the reap."""
        if self.process.poll() is None and self.reaped_at is None:
            self.process.kill()
        self.reaper.join(WAIT_LIMIT)
        assert self.process.stdout is not None
        self.process.stdout.close()


class Outcome(NamedTuple):
    exit_code: int
    received: dict[str, list[str]]  # role -> signals
    latency: float | None  # seconds from the process's exit to the return
    wall: float  # seconds the command ran
    message: str  # the command's output, on one line
    removal: float | None = None  # seconds from the exit to the file's removal


def pidsafe_command() -> str:
    found = shutil.which("pidsafe", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("the pidsafe command is not installed next to this Python")
    return found


def run_library(path: Path, schedule: str) -> tuple[int, float, float, str]:
    """Call pidsafe.stop in this process, reporting as run_tool does."""
    started = time.monotonic()
    try:
        result = pidsafe.stop(path, schedule=schedule)
    except pidsafe.PidfileError as exc:
        return 3, started, time.monotonic(), str(exc)
    returned = time.monotonic()
    return result.exit_code, started, returned, f"{result.outcome}: {result.reason}"


def run_tool(tool: str, path: Path, schedule: str) -> tuple[int, float, float, str]:
    """Run one tool; return its exit code, start and return times, output."""
    if tool == LIBRARY:
        return run_library(path, schedule)
    if tool == "start-stop-daemon":
        argv = [SSD, "--stop", "--pidfile", str(path), "--retry", schedule]
        argv.append("--remove-pidfile")
    else:
        argv = [pidsafe_command(), "stop", str(path), "--retry", schedule]
    started = time.monotonic()
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_LIMIT, check=False
    )
    returned = time.monotonic()
    message = " ".join((done.stdout + done.stderr).split())
    return done.returncode, started, returned, message


def settle(processes: list[Process]) -> None:
    """Give signals sent just before a return time to arrive."""
    time.sleep(0.2)
    for process in processes:
        if process.process.poll() is None:
            continue
        process.reaper.join(WAIT_LIMIT)


def write_pid(path: Path, pid: int | str, mtime_ns: int | None = None) -> None:
    path.write_text(f"{pid}\n")
    path.chmod(0o644)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def start_ns(pid: int) -> int:
    # pidsafe's own reading of /proc/<pid>/stat, the same one it judges by.
    started = start_time(pid)
    assert started is not None
    return started.process_ns


# The cases. Each returns the outcome of one tool on a fresh setup.


def stop_service(
    tool: str, base: Path, schedule: str, mode: str, *options: str
) -> Outcome:
    """Stop a service that writes its exit time, and time each step."""
    process = Process(base, "service", mode, *options)
    watch = RemovalWatch(base / "private")
    try:
        name = f"service-{next(_file_numbers)}.pid"
        path = base / "private" / name
        write_pid(path, process.pid)
        code, started, returned, message = run_tool(tool, path, schedule)
        settle([process])
        exited = process.exited_at()
        latency = removal = None
        if exited is not None:
            latency = returned - exited
            # In-process calls hold the GIL while they remove the file, so
            # the watch thread's stamp is late for them; only time commands.
            if name in watch.removed and tool != LIBRARY:
                removal = watch.removed[name] - exited
        received = {"service": process.received()}
        wall = returned - started
        return Outcome(code, received, latency, wall, message, removal)
    finally:
        watch.close()
        process.finish()


def case_term(tool: str, base: Path) -> Outcome:
    return stop_service(tool, base, "TERM/30/KILL/5", "exit")


def case_cleanup(tool: str, base: Path) -> Outcome:
    cleanup = random.uniform(CLEANUP, CLEANUP + POLL_CYCLE)
    return stop_service(tool, base, "TERM/30/KILL/5", "exit", "--cleanup", str(cleanup))


def case_kill(tool: str, base: Path) -> Outcome:
    return stop_service(tool, base, "TERM/1/KILL/5", "ignore")


def case_recycled(tool: str, base: Path) -> Outcome:
    # The file was written 10 s before the decoy started, so the PID in it
    # cannot be the decoy's own: its writer died and the PID was reused.
    decoy = Process(base, "decoy", "exit")
    try:
        path = base / "private" / "recycled.pid"
        write_pid(path, decoy.pid, start_ns(decoy.pid) - 10 * SECOND)
        code, started, returned, message = run_tool(tool, path, "TERM/5/KILL/5")
        settle([decoy])
        received = {"decoy": decoy.received()}
        return Outcome(code, received, None, returned - started, message)
    finally:
        decoy.finish()


def case_thread(tool: str, base: Path) -> Outcome:
    decoy = Process(base, "decoy", "exit", "--thread")
    try:
        thread_id = int(decoy.ready.split()[1])
        path = base / "private" / "thread.pid"
        write_pid(path, thread_id)
        code, started, returned, message = run_tool(tool, path, "TERM/5/KILL/5")
        settle([decoy])
        received = {"decoy": decoy.received()}
        return Outcome(code, received, None, returned - started, message)
    finally:
        decoy.finish()


def case_untrusted(tool: str, base: Path, users: tuple[User, ...]) -> Outcome:
    # The writer owns the directory, so it can write any PID into the file.
    # The file names a process of another user.
    writer, other = users
    directory = base / f"writer-{time.monotonic_ns()}"
    directory.mkdir(mode=0o755)
    os.chown(directory, writer.uid, writer.gid)
    decoy = Process(base, "decoy", "exit", user=other)
    try:
        path = directory / "app.pid"
        run_as(writer, ["write", str(path), f"{decoy.pid}\n", "0644"])
        code, started, returned, message = run_tool(tool, path, "TERM/5/KILL/5")
        settle([decoy])
        received = {"decoy": decoy.received()}
        return Outcome(code, received, None, returned - started, message)
    finally:
        decoy.finish()


def case_negative(tool: str, base: Path) -> Outcome | None:
    """Run pidsafe on a file containing -1 inside a private PID namespace."""
    if tool == "start-stop-daemon":
        return None
    directory = Path(tempfile.mkdtemp(prefix="negative-", dir=base / "private"))
    argv = ["unshare", "--pid", "--fork", "--mount-proc"]
    argv += [sys.executable, __file__, "--negative-inside", str(directory), tool]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_LIMIT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"namespace run failed: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    received = {"decoy": report["decoy"]}
    return Outcome(report["code"], received, None, report["wall"], report["message"])


def negative_inside(directory: Path, tool: str) -> None:
    """Inside the namespace: a decoy, a file with -1, and pidsafe stop."""
    if os.getpid() != 1:
        raise SystemExit("--negative-inside runs only as PID 1 of a new namespace")
    decoy = Process(directory, "decoy", "exit")
    try:
        path = directory / "negative.pid"
        path.write_text("-1\n")
        path.chmod(0o644)
        code, started, returned, message = run_tool(tool, path, "TERM/1/KILL/1")
        settle([decoy])
        report = {
            "code": code,
            "decoy": decoy.received(),
            "wall": returned - started,
            "message": message,
        }
    finally:
        decoy.finish()
    print(json.dumps(report))


# Running and reporting.

CASES = [
    ("TERM ends it at once", case_term, True),
    ("TERM ends it after 100 to 120 ms of cleanup", case_cleanup, True),
    ("ignores TERM, KILL ends it", case_kill, True),
    ("recycled PID (file older than the process)", case_recycled, False),
    ("file names a thread ID", case_thread, False),
    ("file contains -1", case_negative, False),
    ("untrusted file names another user's process", case_untrusted, False),
]
LIBRARY = "pidsafe.stop() in-process"
TOOLS = ("start-stop-daemon", "pidsafe", LIBRARY)


@contextmanager
def workspace() -> Iterator[Path]:
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="pidsafe-stop-bench-")))
    try:
        base.chmod(0o755)
        (base / "private").mkdir(mode=0o700)
        yield base
    finally:
        shutil.rmtree(base)


def run_case(
    function: Any, tool: str, base: Path, users: tuple[User, ...]
) -> Outcome | None:
    if function is case_untrusted:
        return case_untrusted(tool, base, users)
    result: Outcome | None = function(tool, base)
    return result


def describe(received: dict[str, list[str]]) -> str:
    parts = []
    for role, names in received.items():
        shown = ", ".join(name.removeprefix("SIG") for name in names) or "nothing"
        parts.append(f"{role}: {shown}")
    return "; ".join(parts)


def milliseconds(values: list[float]) -> str:
    """Format as "median / mean (min to max)" in milliseconds."""
    if not values:
        return "-"
    median = statistics.median(values) * 1000
    mean = statistics.mean(values) * 1000
    low = min(values) * 1000
    high = max(values) * 1000
    return f"{median:.1f} / {mean:.1f} ({low:.1f} to {high:.1f})"


def summarize(name: str, tool: str, outcomes: list[Outcome | None]) -> dict[str, Any]:
    ran = [outcome for outcome in outcomes if outcome is not None]
    if not ran:
        return {"case": name, "tool": tool, "ran": False}
    codes = sorted({outcome.exit_code for outcome in ran})
    behaviours = sorted({describe(outcome.received) for outcome in ran})
    latencies = [o.latency for o in ran if o.latency is not None]
    removals = [o.removal for o in ran if o.removal is not None]
    return {
        "case": name,
        "tool": tool,
        "ran": True,
        "runs": len(ran),
        "exit_codes": codes,
        "received": behaviours,
        "latency_ms": milliseconds(latencies),
        "latencies": latencies,
        "removal_ms": milliseconds(removals),
        "removals": removals,
        "wall_ms": milliseconds([o.wall for o in ran]),
        "message": ran[0].message,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | tool | exit code | signals received | exit to file removed, "
        "ms | exit to return, ms | command wall time, ms |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        if not row["ran"]:
            lines.append(f"| {row['case']} | {row['tool']} | not run | | | | |")
            continue
        codes = ", ".join(map(str, row["exit_codes"]))
        received = " / ".join(row["received"])
        lines.append(
            f"| {row['case']} | {row['tool']} | {codes} | {received} | "
            f"{row['removal_ms']} | {row['latency_ms']} | {row['wall_ms']} |"
        )
    return "\n".join(lines)


def environment() -> str:
    version = subprocess.run(
        [SSD, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    return (
        f"{version}; Python {platform.python_version()} on Linux "
        f"{platform.release()}, {os.cpu_count()} CPUs"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=10, help="runs of each timed case per tool"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument(
        "--negative-inside", nargs=2, metavar=("DIR", "TOOL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.negative_inside is not None:
        negative_inside(Path(args.negative_inside[0]), args.negative_inside[1])
        return 0
    if os.geteuid() != 0:
        raise SystemExit("run as root: the cases create users and PID namespaces")

    rows = []
    with ExitStack() as stack:
        users = stack.enter_context(unprivileged_users(2))
        base = stack.enter_context(workspace())
        for name, function, timed in CASES:
            runs = args.repeat if timed else 1
            outcomes: dict[str, list[Outcome | None]] = {tool: [] for tool in TOOLS}
            for _ in range(runs):
                for tool in TOOLS:
                    outcomes[tool].append(run_case(function, tool, base, users))
            for tool in TOOLS:
                rows.append(summarize(name, tool, outcomes[tool]))
            print(f"done: {name}", file=sys.stderr)

    print(environment())
    print()
    print(table(rows))
    print()
    for row in rows:
        if row["ran"]:
            print(f"- {row['case']}, {row['tool']}: {row['message']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
