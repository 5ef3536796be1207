"""Benchmark reading a PID file: time ratios and system calls per read.

Every contender reads the same file, ``<tmp>/pidsafe-bench-*/d2/d3/d4/bench.pid``,
four private directories deep: ``tempfile.mkdtemp()`` and the three below it,
each with mode 0700, made fresh for each run. Contenders:

* ``read_pidfile``: ``pidsafe.read_pidfile(path)``, resolving every
  directory from "/" on each call.
* ``PidDirectory.read``: ``PidDirectory(dirname).read(name)``, with the
  directory resolved once before timing starts.
* ``pathlib``: ``int(pathlib.Path(path).read_text())``.
* ``minimal``: ``os.open(path, O_RDONLY|O_NOFOLLOW)``, ``fstat``, one
  ``read`` of 65 bytes, ``close`` and ``int()``: the least a careful reader
  does, and the baseline of every ratio.
* ``minimal at``: the same, but opened relative to a directory fd held for
  the whole run, as ``PidDirectory`` does.
* ``syscalls of read_pidfile`` and ``syscalls of PidDirectory.read``: the
  system calls that each pidsafe reader makes on this file, in the same
  order and with the same flags, but with no checks in between. They are
  the floor that removing Python work alone can reach.

With ``--compare-src DIR``, the pidsafe package in ``DIR/pidsafe`` (such as
an older commit's ``src``, unpacked with ``git archive``) is loaded beside
the installed one and its two readers join the contenders, marked
``(compared)``. That measures a change within one run instead of across two
runs, whose difference the noise can swamp.

The machines this runs on are shared and noisy, so each round times every
contender once, in a shuffled order, and the table reports the median over
rounds of each round's time ratio against the baseline timed in that round.
Times are the process's CPU time, which leaves out time spent running other
processes.

System calls are counted with ``strace -f -c`` on a child process per
contender that runs the loop ``--strace-iterations`` times. A child whose
loop body does nothing gives the baseline, which is subtracted, so the
counts are per read. Every child does the same setup, whatever it times.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import os
import pathlib
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import pidsafe

PID_TEXT = "12345\n"
# Private directories on the path, counting the one mkdtemp() makes.
DEPTH = 4
FILE_NAME = "bench.pid"
READ_SIZE = 65
MINIMAL_FLAGS = os.O_RDONLY | os.O_NOFOLLOW
# The flags pidsafe opens directories and PID files with, for the floors.
DIRECTORY_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LEAF_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

BASELINE = "minimal"
# Loop body of the strace baseline, which the table does not show.
EMPTY = "empty"
COMPARED = " (compared)"


class Tree(NamedTuple):
    root: str
    directory: str
    path: str


def make_tree() -> Tree:
    """Create the temporary tree and the PID file, and return their paths."""
    root = tempfile.mkdtemp(prefix="pidsafe-bench-")
    directory = root
    for level in range(2, DEPTH + 1):
        directory = os.path.join(directory, f"d{level}")
        os.mkdir(directory, 0o700)
    path = os.path.join(directory, FILE_NAME)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, PID_TEXT.encode("ascii"))
    finally:
        os.close(fd)
    return Tree(root, directory, path)


def minimal_read(path: str) -> int:
    fd = os.open(path, MINIMAL_FLAGS)
    try:
        os.fstat(fd)
        data = os.read(fd, READ_SIZE)
    finally:
        os.close(fd)
    return int(data)


def minimal_read_at(name: str, dir_fd: int) -> int:
    fd = os.open(name, MINIMAL_FLAGS, dir_fd=dir_fd)
    try:
        os.fstat(fd)
        data = os.read(fd, READ_SIZE)
    finally:
        os.close(fd)
    return int(data)


def read_leaf_syscalls(name: str, dir_fd: int) -> int:
    """Open, fstat and read `name` as pidsafe does, with no checks."""
    fd = os.open(name, LEAF_FLAGS, dir_fd=dir_fd)
    try:
        os.fstat(fd)
        data = os.read(fd, READ_SIZE)
        os.read(fd, READ_SIZE - len(data))  # pidsafe reads on to end of file
    finally:
        os.close(fd)
    return int(data)


def read_pidfile_syscalls(components: list[str], name: str) -> int:
    """Make read_pidfile's system calls for an absolute path, no checks."""
    os.geteuid()
    fd = os.open("/", DIRECTORY_FLAGS)
    os.fstat(fd)
    opened = [fd]
    try:
        for component in components:
            fd = os.open(component, DIRECTORY_FLAGS, dir_fd=fd)
            opened.append(fd)
            os.fstat(fd)
        return read_leaf_syscalls(name, fd)
    finally:
        for fd in opened:
            os.close(fd)


def piddir_read_syscalls(name: str, dir_fd: int) -> int:
    """Make PidDirectory.read's system calls, with no checks."""
    os.fstat(dir_fd)
    return read_leaf_syscalls(name, dir_fd)


def load_compared(source: str) -> ModuleType:
    """Import the pidsafe package under `source` as a module of its own."""
    package = os.path.join(os.path.abspath(source), "pidsafe")
    init = os.path.join(package, "__init__.py")
    if not os.path.isfile(init):
        raise SystemExit(
            f"--compare-src: {init} not found. Pass the directory that "
            "contains the pidsafe package, such as an unpacked src"
        )
    spec = importlib.util.spec_from_file_location(
        "pidsafe_compared", init, submodule_search_locations=[package]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"--compare-src: cannot import {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Contenders:
    """The functions under test, bound to one tree. close() releases the fds.

    `calls` maps each contender's name, in table order, to a function that
    reads the PID once. The strace baseline `EMPTY` comes last.
    """

    def __init__(self, tree: Tree, compared: ModuleType | None = None) -> None:
        self.tree = tree
        self.modules = [pidsafe] if compared is None else [pidsafe, compared]
        self.piddirs = [module.PidDirectory(tree.directory) for module in self.modules]
        self.dir_fd = os.open(tree.directory, os.O_RDONLY | os.O_DIRECTORY)
        self.calls: dict[str, Callable[[], object]] = {}
        for module, piddir in zip(self.modules, self.piddirs):
            suffix = "" if module is pidsafe else COMPARED
            self.calls["read_pidfile" + suffix] = functools.partial(
                module.read_pidfile, tree.path
            )
            self.calls["PidDirectory.read" + suffix] = functools.partial(
                piddir.read, FILE_NAME
            )
        path = tree.path
        self.calls["pathlib"] = lambda: int(pathlib.Path(path).read_text())
        self.calls["minimal"] = functools.partial(minimal_read, path)
        self.calls["minimal at"] = functools.partial(
            minimal_read_at, FILE_NAME, self.dir_fd
        )
        self.calls["syscalls of read_pidfile"] = functools.partial(
            read_pidfile_syscalls, tree.directory.strip("/").split("/"), FILE_NAME
        )
        self.calls["syscalls of PidDirectory.read"] = functools.partial(
            piddir_read_syscalls, FILE_NAME, self.dir_fd
        )
        self.calls[EMPTY] = lambda: None

    @property
    def names(self) -> list[str]:
        """Names of the contenders shown in the table, in table order."""
        return [name for name in self.calls if name != EMPTY]

    def check(self) -> None:
        """Fail loudly if any contender does not read the expected PID."""
        expected = int(PID_TEXT)
        for name in self.names:
            result = self.calls[name]()
            pid = getattr(result, "pid", result)
            if pid != expected:
                raise SystemExit(f"{name} returned {result!r}, not {expected}")
        record = pidsafe.read_pidfile(self.tree.path)
        if not record.trusted:
            raise SystemExit(f"benchmark file is untrusted: {record.reason}")

    def close(self) -> None:
        for piddir in self.piddirs:
            piddir.close()
        os.close(self.dir_fd)


def time_batch(call: Callable[[], object], iterations: int) -> float:
    """Return seconds per call over `iterations` calls, with gc disabled."""
    loop = range(iterations)
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.process_time()
        for _ in loop:
            call()
        elapsed = time.process_time() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / iterations


def time_rounds(
    contenders: Contenders, iterations: int, rounds: int, seed: int
) -> dict[str, list[float]]:
    """Time each contender once per round, in a shuffled order per round."""
    order = contenders.names
    shuffler = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in order}
    for name in order:  # a shorter warm-up round, not recorded
        time_batch(contenders.calls[name], max(1, iterations // 10))
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            times[name].append(time_batch(contenders.calls[name], iterations))
    return times


def median_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Return each contender's median over rounds of time / baseline time."""
    ratios = {}
    for name, series in times.items():
        per_round = [t / b for t, b in zip(series, times[baseline])]
        ratios[name] = statistics.median(per_round)
    return ratios


def run_child(args: argparse.Namespace) -> None:
    """Strace child: set up as every child does, then loop one contender."""
    tree = Tree(args.tree_root, args.tree_dir, args.tree_path)
    compared = load_compared(args.compare_src) if args.compare_src else None
    contenders = Contenders(tree, compared)
    contenders.check()
    call = contenders.calls[args.child]
    for _ in range(args.strace_iterations):
        call()
    contenders.close()


def parse_strace_summary(text: str) -> dict[str, int]:
    """Return {syscall: calls} from the table ``strace -c`` writes."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5 or not fields[3].isdigit():
            continue
        name = fields[-1]
        if name == "total":
            continue
        counts[name] = int(fields[3])
    return counts


def strace_counts(
    tree: Tree, child: str, iterations: int, compare_src: str | None
) -> dict[str, int]:
    """Run one strace child and return its syscall counts."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as output:
        command = [
            "strace",
            "-f",
            "-c",
            "-o",
            output.name,
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            child,
            "--strace-iterations",
            str(iterations),
            "--tree-root",
            tree.root,
            "--tree-dir",
            tree.directory,
            "--tree-path",
            tree.path,
        ]
        if compare_src is not None:
            command += ["--compare-src", compare_src]
        subprocess.run(command, check=True)
        return parse_strace_summary(output.read())


def syscalls_per_read(
    contenders: Contenders, iterations: int, compare_src: str | None
) -> dict[str, dict[str, float]]:
    """Return {contender: {syscall: calls per read}}, baseline subtracted."""
    tree = contenders.tree
    empty = strace_counts(tree, EMPTY, iterations, compare_src)
    result = {}
    for name in contenders.names:
        counts = strace_counts(tree, name, iterations, compare_src)
        per_read = {}
        for syscall in counts.keys() | empty.keys():
            extra = counts.get(syscall, 0) - empty.get(syscall, 0)
            value = extra / iterations
            if abs(value) >= 0.01:
                per_read[syscall] = value
        result[name] = per_read
    return result


def format_counts(per_read: dict[str, float]) -> str:
    parts = []
    for syscall, value in sorted(per_read.items(), key=lambda kv: (-kv[1], kv[0])):
        shown = f"{value:g}" if value == round(value) else f"{value:.2f}"
        parts.append(f"{syscall} {shown}")
    return ", ".join(parts)


def describe_machine() -> str:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"nproc {os.cpu_count()}, CPU {cpu}, "
        f"Python {platform.python_version()}, kernel {platform.release()}"
    )


def quartiles(times: dict[str, list[float]], name: str, baseline: str) -> str:
    """Format the 25th and 75th percentiles of one contender's round ratios."""
    per_round = [t / b for t, b in zip(times[name], times[baseline])]
    if len(per_round) < 2:
        return "-"
    low, _, high = statistics.quantiles(per_round, n=4)
    return f"{low:.2f}-{high:.2f}"


def print_table(
    times: dict[str, list[float]],
    syscalls: dict[str, dict[str, float]] | None,
) -> None:
    ratios = median_ratios(times, BASELINE)
    pathlib_ratios = median_ratios(times, "pathlib")
    print(
        "| contender | median µs/call | time / minimal | quartiles "
        "| time / pathlib | syscalls per read | syscalls by name |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, series in times.items():
        micros = statistics.median(series) * 1e6
        spread = quartiles(times, name, BASELINE)
        if syscalls is None:
            total, detail = "-", "not measured"
        else:
            total = f"{sum(syscalls[name].values()):g}"
            detail = format_counts(syscalls[name])
        print(
            f"| {name} | {micros:.2f} | {ratios[name]:.2f} | {spread} "
            f"| {pathlib_ratios[name]:.2f} | {total} | {detail} |"
        )


def print_targets(times: dict[str, list[float]]) -> None:
    cold = median_ratios(times, "pathlib")["read_pidfile"]
    warm = median_ratios(times, BASELINE)["PidDirectory.read"]
    for reader in ("read_pidfile", "PidDirectory.read"):
        if reader + COMPARED in times:
            change = median_ratios(times, reader + COMPARED)[reader]
            print(f"{reader}, this tree / compared tree: {change:.3f}")
    print(
        f"Target 1, read_pidfile no slower than pathlib: "
        f"{cold:.2f}x pathlib, {'met' if cold <= 1.0 else 'missed'}."
    )
    print(
        f"Target 2, PidDirectory.read within 1.1x minimal: "
        f"{warm:.2f}x minimal, {'met' if warm <= 1.1 else 'missed'}."
    )


def print_report(
    args: argparse.Namespace,
    times: dict[str, list[float]],
    syscalls: dict[str, dict[str, float]] | None,
) -> None:
    print(f"Command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"Machine: {describe_machine()}")
    print(
        f"Timing: {args.rounds} rounds x {args.iterations} calls per contender, "
        "in a shuffled order per round. Ratios are medians over rounds of "
        "per-round ratios, and quartiles are those of time / minimal."
    )
    if syscalls is not None:
        print(
            f"Syscalls: strace -f -c over {args.strace_iterations} calls, "
            "less an empty loop, per call."
        )
    print()
    print_table(times, syscalls)
    print()
    print_targets(times)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations",
        type=int,
        default=200,
        help="calls per contender in each timed round (default: 200)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=201,
        help="timed rounds, over which the table reports medians (default: 201)",
    )
    parser.add_argument(
        "--strace-iterations",
        type=int,
        default=1000,
        help="calls per strace child, or 0 to skip counting syscalls (default: 1000)",
    )
    parser.add_argument(
        "--compare-src",
        metavar="DIR",
        help="also time the pidsafe package in DIR/pidsafe, such as an older "
        "commit's src unpacked with git archive",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the round order (default: 0)"
    )

    # Internal: run as an strace child.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tree-root", help=argparse.SUPPRESS)
    parser.add_argument("--tree-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tree-path", help=argparse.SUPPRESS)

    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1 or args.strace_iterations < 0:
        parser.error(
            "--iterations and --rounds must be at least 1, "
            "--strace-iterations at least 0"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        run_child(args)
        return
    if args.strace_iterations and shutil.which("strace") is None:
        raise SystemExit("strace not found: install it, or pass --strace-iterations 0")
    compared = load_compared(args.compare_src) if args.compare_src else None
    tree = make_tree()
    try:
        contenders = Contenders(tree, compared)
        try:
            contenders.check()
            times = time_rounds(contenders, args.iterations, args.rounds, args.seed)
            syscalls = None
            if args.strace_iterations:
                syscalls = syscalls_per_read(
                    contenders, args.strace_iterations, args.compare_src
                )
        finally:
            contenders.close()
    finally:
        shutil.rmtree(tree.root)
    print_report(args, times, syscalls)


if __name__ == "__main__":
    main()
