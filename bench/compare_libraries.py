"""Run Python PID file libraries against hostile PID files; print a table.

Usage::

    python bench/compare_libraries.py [--timeout SECONDS] [--memory-limit MIB]

Install the contenders first with ``pip install -e '.[compare]'``. A
contender that is not installed is left out of the table, with a note on
stderr.

Each contender is called the way its own documentation reads a PID file or
checks for a running instance. Every attempt runs in a fresh subprocess on a
freshly made input, so one attempt cannot disturb the next. The subprocess
has a hard timeout, so an attempt that blocks (a FIFO with no writer) is
recorded as "hangs" and killed. It also has an address-space limit, so an
attempt that reads without bound (``/dev/zero``) fails with MemoryError
instead of filling the machine's memory.

Safety. The script only touches what it creates: one temporary directory and
the helper processes it starts, which it stops by PID at the end. The only
signal any contender may send is signal 0, which checks for a process and
delivers nothing. Before a contender is imported, the subprocess replaces
``os.kill``, ``os.killpg``, ``signal.pthread_kill`` and
``signal.pidfd_send_signal`` with wrappers that raise instead of sending any
other signal, and such a cell reads "not run: would send signal N". The
wrappers cannot stop a C extension that calls kill(2) itself, but none of
the code paths run here does: each one signals through ``os.kill``. The
script does not run a contender that writes to the PID file against the
``/dev/zero`` symlink, and does not lock ``/dev/zero`` for the "lock held"
column.

Linux only: the thread, zombie and PID-reuse inputs need Linux process
semantics and ``os.waitid``.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

PIDFILE_NAME = "service.pid"
DEFAULT_TIMEOUT = 5.0
DEFAULT_MEMORY_LIMIT_MIB = 512

# Each attempt prints one JSON line to stdout, prefixed with this marker so
# that output a library prints itself cannot be mistaken for it.
RESULT_MARKER = "compare-result:"


# --- What runs inside an attempt's subprocess --------------------------------


class WouldSignal(Exception):
    """A contender tried to send a signal other than 0, which was not sent."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _guard(send: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(target: int, signum: int, *rest: Any) -> Any:
        if signum != 0:
            raise WouldSignal(signum)
        return send(target, signum, *rest)

    return guarded


def install_signal_guard() -> None:
    """Make every Python-level way to send a signal raise for signals ≠ 0."""
    os.kill = _guard(os.kill)
    os.killpg = _guard(os.killpg)
    signal.pthread_kill = _guard(signal.pthread_kill)
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = _guard(signal.pidfd_send_signal)


# Each check returns (pid, template): the PID the contender arrived at (or
# None) and the cell text, in which "{pid}" stands for that PID. The parent
# fills it in, naming PIDs of its own helpers ("the TID") instead of numbers.
Check = Callable[[str], "tuple[int | None, str]"]


def check_naive(path: str) -> tuple[int | None, str]:
    with open(path) as stream:
        pid = int(stream.read())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid, "{pid}, no such process"
    return pid, "{pid}, alive"


def check_psutil(path: str) -> tuple[int | None, str]:
    psutil = importlib.import_module("psutil")
    with open(path) as stream:
        pid = int(stream.read())
    if psutil.pid_exists(pid):
        return pid, "{pid}, exists"
    return pid, "{pid}, does not exist"


def check_pidsafe(path: str) -> tuple[int | None, str]:
    pidsafe = importlib.import_module("pidsafe")
    found = pidsafe.status(path)
    if found.state not in ("refused", "unknown"):
        return found.pid, f"{{pid}}, {found.state}"
    # status() gives the reason only as text, and read_pidfile raises an
    # exception whose class names it.
    try:
        pidsafe.read_pidfile(path)
    except pidsafe.PidfileError as error:
        return None, f"{found.state} ({type(error).__name__})"
    return None, f"{found.state}: {found.reason}"


def check_pid(path: str) -> tuple[int | None, str]:
    pid = importlib.import_module("pid")
    directory, name = os.path.split(path)
    checker = pid.PidFile(pidname=name, piddir=directory)
    try:
        result = checker.check()
    except pid.PidFileAlreadyRunningError as error:
        return error.pid, "{pid}, already running"
    return None, result


def check_python_daemon(path: str) -> tuple[int | None, str]:
    daemon_pidfile = importlib.import_module("daemon.pidfile")
    lock = daemon_pidfile.TimeoutPIDLockFile(path)
    pid = lock.read_pid()
    return pid, f"read_pid {{pid}}; is_locked {lock.is_locked()}"


def check_pidlockfile(path: str) -> tuple[int | None, str]:
    pidlockfile = importlib.import_module("pidlockfile")
    pid = pidlockfile.PIDLockFile(path).is_locked()
    return pid, "returns {pid}"


def check_pidfile(path: str) -> tuple[int | None, str]:
    pidfile = importlib.import_module("pidfile")
    # The package has no read or check call: entering the context manager is
    # its check. It exits with SystemExit when another process holds the lock.
    stream = pidfile.PidFile(path).__enter__()
    contents = stream.read()
    followed = os.path.realpath(path) != os.path.abspath(path)
    if contents != str(os.getpid()):
        return None, f"file then contains {contents!r}"
    if followed:
        return None, "follows it, writes its own PID into the target"
    return None, "writes its own PID"


CHECKS: dict[str, Check] = {
    "naive": check_naive,
    "psutil": check_psutil,
    "pidsafe": check_pidsafe,
    "pid": check_pid,
    "python-daemon": check_python_daemon,
    "pidlockfile": check_pidlockfile,
    "pidlockfile-held": check_pidlockfile,
    "pidfile": check_pidfile,
}


def run_attempt(key: str, path: str, memory_limit_mib: int) -> None:
    """Run one check in this process and print its result as JSON."""
    limit = memory_limit_mib << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    install_signal_guard()
    try:
        pid, template = CHECKS[key](path)
    except WouldSignal as error:
        result: dict[str, Any] = {"text": f"not run: would send signal {error.signum}"}
    except BaseException as error:  # SystemExit too: pidfile exits that way
        result = {"text": f"raises {type(error).__name__}"}
    else:
        result = {"pid": pid, "text": template}
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --- Contenders and inputs, used by the parent process -----------------------


class Contender(NamedTuple):
    key: str
    title: str
    call: str  # what the attempt calls, shown under the table
    distribution: str | None  # PyPI name, or None for the naive check
    writes: bool  # modifies the file it checks
    holds_lock: bool  # the parent holds a flock on the input meanwhile


CONTENDERS = [
    Contender(
        "naive",
        "naive",
        "`int(open(path).read())`, then `os.kill(pid, 0)`",
        None,
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "psutil",
        "psutil",
        "`int(open(path).read())`, then `psutil.pid_exists(pid)`",
        "psutil",
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "pidsafe",
        "pidsafe",
        "`pidsafe.status(path)`; when refused, the exception of "
        "`pidsafe.read_pidfile(path)`",
        "pidsafe",
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "pid",
        "pid",
        "`pid.PidFile(pidname=name, piddir=directory).check()`",
        "pid",
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "python-daemon",
        "python-daemon",
        "`daemon.pidfile.TimeoutPIDLockFile(path)`: `read_pid()`, then `is_locked()`",
        "python-daemon",
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "pidlockfile",
        "pidlockfile",
        "`pidlockfile.PIDLockFile(path).is_locked()`",
        "pidlockfile",
        writes=False,
        holds_lock=False,
    ),
    Contender(
        "pidlockfile-held",
        "pidlockfile, lock held",
        "the same, while another process holds a `flock` on the file",
        "pidlockfile",
        writes=False,
        holds_lock=True,
    ),
    Contender(
        "pidfile",
        "pidfile",
        "`pidfile.PidFile(path).__enter__()`, then reading the file back",
        "pidfile",
        writes=True,
        holds_lock=False,
    ),
]

# Import names of the distributions, to tell which contenders are installed.
MODULES = {
    "psutil": "psutil",
    "pidsafe": "pidsafe",
    "pid": "pid",
    "python-daemon": "daemon",
    "pidlockfile": "pidlockfile",
    "pidfile": "pidfile",
}


class Helpers(NamedTuple):
    """Processes started by the script, whose PIDs the inputs name."""

    live: subprocess.Popen[bytes]
    threaded: subprocess.Popen[bytes]
    tid: int
    zombie: subprocess.Popen[bytes]
    recycled: subprocess.Popen[bytes]
    recycled_started: float  # time.time() just before `recycled` started

    def names(self) -> dict[int, str]:
        """Map each helper PID to the words a cell uses for it."""
        return {
            self.live.pid: "the PID in the target",
            self.tid: "the TID",
            self.zombie.pid: "the zombie's PID",
            self.recycled.pid: "the new process's PID",
        }


class HostileInput(NamedTuple):
    label: str
    make: Callable[[Path, Helpers], None]  # creates the input at the path
    outside: bool = False  # resolves to a file the script did not create


def _write(path: Path, data: str | bytes) -> None:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def _contents(data: str | bytes) -> Callable[[Path, Helpers], None]:
    return lambda path, _: _write(path, data)


def _make_symlink_to_pid(path: Path, helpers: Helpers) -> None:
    target = path.with_name("target.pid")
    _write(target, f"{helpers.live.pid}\n")
    path.symlink_to(target)


def _make_fifo(path: Path, _: Helpers) -> None:
    os.mkfifo(path)


def _make_recycled(path: Path, helpers: Helpers) -> None:
    _write(path, f"{helpers.recycled.pid}\n")
    # The file's mtime is an hour before its process started, so that process
    # did not write it: the PID was written for an earlier process and reused.
    written = helpers.recycled_started - 3600
    os.utime(path, (written, written))


INPUTS = [
    HostileInput("symlink to a file holding a live PID", _make_symlink_to_pid),
    HostileInput(
        "symlink to `/dev/zero`",
        lambda path, _: path.symlink_to("/dev/zero"),
        outside=True,
    ),
    HostileInput("FIFO with no writer", _make_fifo),
    HostileInput("`-1`", _contents("-1\n")),
    HostileInput("`0`", _contents("0\n")),
    HostileInput("`+5`", _contents("+5\n")),
    HostileInput("`1_000`", _contents("1_000\n")),
    HostileInput("`12 34`", _contents("12 34\n")),
    HostileInput("`١٢` (Arabic-Indic digits 1, 2)", _contents("١٢\n")),
    HostileInput("empty file", _contents(b"")),
    HostileInput("1 MiB of digits", _contents(b"1" * (1 << 20))),
    HostileInput(
        "TID of a helper's second thread",
        lambda path, helpers: _write(path, f"{helpers.tid}\n"),
    ),
    HostileInput(
        "PID of a zombie",
        lambda path, helpers: _write(path, f"{helpers.zombie.pid}\n"),
    ),
    HostileInput(
        "recycled PID: live process started after the file's mtime",
        _make_recycled,
    ),
]


# --- Helper processes --------------------------------------------------------

SLEEPER = "import time; time.sleep(3600)"
# Prints the native thread ID of a second thread, then keeps both alive.
THREADED = """\
import threading, time
def second():
    print(threading.get_native_id(), flush=True)
    time.sleep(3600)
threading.Thread(target=second, daemon=True).start()
time.sleep(3600)
"""


def _python(code: str, **options: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **options)


def _make_zombie() -> subprocess.Popen[bytes]:
    child = _python("pass")
    # WNOWAIT waits for the exit without reaping, so the child stays a
    # zombie until helpers_running() calls wait() on exit.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    return child


def _read_tid(threaded: subprocess.Popen[bytes]) -> int:
    assert threaded.stdout is not None
    line = threaded.stdout.readline()
    if not line:
        raise RuntimeError("the threaded helper exited before printing its TID")
    return int(line)


@contextmanager
def helpers_running() -> Iterator[Helpers]:
    """Start the helper processes, then kill and reap them by PID on exit."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        live = _python(SLEEPER)
        started.append(live)
        threaded = _python(THREADED, stdout=subprocess.PIPE)
        started.append(threaded)
        tid = _read_tid(threaded)
        zombie = _make_zombie()
        started.append(zombie)
        recycled_started = time.time()
        recycled = _python(SLEEPER)
        started.append(recycled)
        yield Helpers(live, threaded, tid, zombie, recycled, recycled_started)
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


# --- Running the attempts ----------------------------------------------------


@contextmanager
def lock_held(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on what `path` resolves to, as a holder would."""
    # O_NONBLOCK: opening the FIFO input must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def skip_reason(contender: Contender, hostile: HostileInput) -> str | None:
    """Return why this attempt is not run, or None to run it."""
    if hostile.outside and contender.writes:
        return "not run: would write to `/dev/zero`"
    if hostile.outside and contender.holds_lock:
        return "not run: would lock `/dev/zero`"
    return None


def attempt(
    contender: Contender,
    path: Path,
    helpers: Helpers,
    options: argparse.Namespace,
) -> str:
    """Run `contender` on the input at `path` in a subprocess and return the cell."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--attempt",
        contender.key,
        str(path),
        "--memory-limit",
        str(options.memory_limit),
    ]
    try:
        done = subprocess.run(
            command,
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=options.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed the attempt, by its PID, and reaped it.
        return "hangs"
    return describe(done, helpers)


def describe(done: subprocess.CompletedProcess[str], helpers: Helpers) -> str:
    """Turn an attempt's output into the few words of its cell."""
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
            break
    else:
        if done.returncode < 0:
            return f"killed by signal {-done.returncode}"
        return f"exits with status {done.returncode}"
    pid = result.get("pid")
    pid_text = "None"
    if isinstance(pid, int):
        pid_text = helpers.names().get(pid, str(pid))
    text: str = result["text"]
    return text.replace("{pid}", pid_text)


def run_cell(
    contender: Contender,
    hostile: HostileInput,
    directory: Path,
    helpers: Helpers,
    options: argparse.Namespace,
) -> str:
    reason = skip_reason(contender, hostile)
    if reason is not None:
        return reason
    directory.mkdir()
    path = directory / PIDFILE_NAME
    hostile.make(path, helpers)
    if not contender.holds_lock:
        return attempt(contender, path, helpers, options)
    with lock_held(path):
        return attempt(contender, path, helpers, options)


def run_table(
    contenders: list[Contender], options: argparse.Namespace
) -> list[list[str]]:
    """Return one row of cells per input, one cell per contender."""
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="compare-pidfiles-") as scratch,
        helpers_running() as helpers,
    ):
        for row, hostile in enumerate(INPUTS):
            cells = [hostile.label]
            for column, contender in enumerate(contenders):
                directory = Path(scratch, f"{row:02d}-{column:02d}")
                cells.append(run_cell(contender, hostile, directory, helpers, options))
            rows.append(cells)
    return rows


# --- Output ------------------------------------------------------------------


def installed(contender: Contender) -> bool:
    module = MODULES.get(contender.distribution or "")
    if module is None:
        return True
    return importlib.util.find_spec(module) is not None


def version_lines(contenders: list[Contender]) -> list[str]:
    lines = [
        f"- Python {platform.python_version()} on Linux {platform.release()}, "
        f"running as uid {os.geteuid()}",
    ]
    seen = set()
    for contender in contenders:
        name = contender.distribution
        if name is None or name in seen:
            continue
        seen.add(name)
        lines.append(f"- {name} {importlib.metadata.version(name)}")
    if "python-daemon" in seen:
        lines.append(f"- lockfile {importlib.metadata.version('lockfile')}")
    return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        escaped = [cell.replace("|", "\\|") for cell in cells]
        return "| " + " | ".join(escaped) + " |"

    return [line(header), line(["---"] * len(header)), *map(line, rows)]


def report(contenders: list[Contender], options: argparse.Namespace) -> str:
    rows = run_table(contenders, options)
    today = datetime.date.today().isoformat()
    lines = [f"Measured {today} with:", "", *version_lines(contenders), ""]
    lines.append("Calls:")
    lines.append("")
    lines += [f"- {c.title}: {c.call}" for c in contenders]
    lines.append("")
    header = ["Input", *(c.title for c in contenders)]
    lines += markdown_table(header, rows)
    return "\n".join(lines)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds before an attempt counts as hanging and is killed "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--memory-limit",
        type=int,
        default=DEFAULT_MEMORY_LIMIT_MIB,
        metavar="MIB",
        help="address-space limit of each attempt, in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--attempt",
        nargs=2,
        metavar=("CONTENDER", "PATH"),
        help=argparse.SUPPRESS,  # internal: run one attempt in this process
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse_arguments(argv)
    if options.attempt:
        key, path = options.attempt
        run_attempt(key, path, options.memory_limit)
        return 0
    if not sys.platform.startswith("linux"):
        print(
            f"compare_libraries.py needs Linux for its thread, zombie and PID reuse "
            f"inputs; this platform is {sys.platform}",
            file=sys.stderr,
        )
        return 2
    contenders = [c for c in CONTENDERS if installed(c)]
    for contender in CONTENDERS:
        if contender not in contenders:
            print(
                f"{contender.title} is not installed; left out. "
                "Install the contenders with: pip install -e '.[compare]'",
                file=sys.stderr,
            )
    print(report(contenders, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
