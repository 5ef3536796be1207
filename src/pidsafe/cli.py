"""The ``pidsafe`` command.

Exit codes follow what init scripts expect. ``status`` uses the LSB codes:
0 running, 1 dead but the file exists, 3 no file, 4 unknown or refused.
``read`` exits 0 after printing the PID, 1 when the file cannot be read
safely. ``clean`` exits 0 when the file was stale and removed or is absent,
1 when it is in use, 4 when it was refused. ``runtime-dir`` exits 0 after
printing the directory, 1 when no safe directory is available. ``run``
exits with the command's status (128 + N when signal N killed it), 3 when
another instance holds the PID file, 125 when pidsafe itself fails, and
126 or 127 when the command cannot be executed or is not found. ``stop``
uses start-stop-daemon's codes: 0 stopped, 1 nothing to stop, 2 still
running when the schedule ended, 3 refused or failed. ``signal`` exits 0
after sending, 1 when there is nothing to signal, 3 when it was refused or
failed. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Sequence
from typing import Any, Final, TextIO

from . import __version__
from ._errors import NotRunning, PidfileError, PidfileMissing
from ._read import PidfileRecord, read_pidfile
from ._run import RunRequest, run
from ._runtime import runtime_dir
from ._status import Status, clean_pidfile, status
from ._stop import (
    DEFAULT_SCHEDULE,
    StopProgress,
    StopResult,
    signal_number,
    signal_pidfile,
    stop,
)


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True))


def _record_json(record: PidfileRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "pid": record.pid,
        "uid": record.uid,
        "mode": f"{record.mode:04o}",
        "mtime": record.mtime,
        "trusted": record.trusted,
        "reason": record.reason,
    }


def _status_json(found: Status) -> dict[str, Any]:
    return {
        "path": found.path,
        "state": found.state,
        "pid": found.pid,
        "reason": found.reason,
        "exit_code": found.exit_code,
        "file": _record_json(found.record),
    }


def _error(exc: PidfileError, as_json: bool) -> None:
    if as_json:
        _print_json(
            {"path": exc.path, "error": type(exc).__name__, "reason": exc.reason}
        )
    print(f"pidsafe: {exc}", file=sys.stderr)


def _run_read(args: argparse.Namespace) -> int:
    try:
        record = read_pidfile(args.path, strict=args.strict)
    except PidfileError as exc:
        _error(exc, args.json)
        return 1
    if args.json:
        data = _record_json(record)
        assert data is not None
        _print_json({"path": record.path, **data})
    else:
        print(record.pid)
    return 0


def _describe(found: Status) -> str:
    trust = ""
    if found.record is not None and not found.record.trusted:
        trust = f" (untrusted file: {found.record.reason})"
    if found.state == "running":
        return f"{found.path}: running, PID {found.pid}{trust}"
    if found.pid is not None:
        return f"{found.path}: {found.state}, PID {found.pid}: {found.reason}{trust}"
    return f"{found.path}: {found.state}: {found.reason}{trust}"


def _run_status(args: argparse.Namespace) -> int:
    found = status(args.path)
    if args.json:
        _print_json(_status_json(found))
    else:
        print(_describe(found))
    return found.exit_code


def _run_clean(args: argparse.Namespace) -> int:
    try:
        found = clean_pidfile(args.path)
    except PidfileError as exc:
        _error(exc, args.json)
        return 4
    removed = found.state == "stale"
    code = 0 if removed or found.state == "absent" else 1
    if args.json:
        # exit_code is clean's own exit status, not the status command's.
        _print_json({**_status_json(found), "removed": removed, "exit_code": code})
    elif removed:
        print(f"{found.path}: removed stale PID file ({found.reason})")
    elif found.state == "absent":
        print(f"{found.path}: no PID file")
    else:
        print(f"{found.path}: kept, {_describe(found).split(': ', 1)[1]}")
    return code


def _run_runtime_dir(args: argparse.Namespace) -> int:
    try:
        path = runtime_dir(args.app, env_var=args.env_var, create=not args.no_create)
    except (PidfileError, ValueError) as exc:
        print(f"pidsafe: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _run_run(args: argparse.Namespace) -> int:
    if args.log is not None and not args.background:
        print("pidsafe run: --log needs --background", file=sys.stderr)
        return 2
    request = RunRequest(
        pidfile=args.pidfile,
        command=args.command,
        mode=args.mode,
        background=args.background,
        log=args.log,
    )
    return run(request)


def _add_run(commands: Any) -> None:
    run_parser = commands.add_parser(
        "run",
        help="hold a PID file while a command runs",
        usage=(
            "pidsafe run --pidfile PATH [--mode {supervise,exec}] "
            "[--background] [--log FILE] -- COMMAND [ARG ...]"
        ),
        description=(
            "Hold PATH while COMMAND runs. In supervise mode the file names "
            "a child that runs COMMAND; signals are passed on to it, and "
            "the file is removed when it exits. In exec mode pidsafe "
            "becomes COMMAND, which inherits the lock."
        ),
    )
    run_parser.add_argument(
        "--pidfile", required=True, metavar="PATH", help="the PID file to hold"
    )
    run_parser.add_argument(
        "--mode",
        choices=("supervise", "exec"),
        default="supervise",
        help="supervise COMMAND as a child (default), or exec it",
    )
    run_parser.add_argument(
        "--background",
        action="store_true",
        help="detach, and return once the PID file names the running command",
    )
    run_parser.add_argument(
        "--log",
        metavar="FILE",
        help="with --background: append COMMAND's output to FILE (mode 0600) "
        "instead of discarding it",
    )
    run_parser.add_argument(
        "command",
        nargs="+",
        metavar="COMMAND",
        help="the command and its arguments, after --",
    )
    run_parser.set_defaults(handler=_run_run)


def _argument_error(path: str, exc: Exception, as_json: bool) -> None:
    """Report an invalid schedule, signal or --expect-exe path."""
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = f"{exc.filename}: {exc.strerror}"
    else:
        reason = str(exc)
    if as_json:
        _print_json({"path": path, "error": type(exc).__name__, "reason": reason})
    # The argument is at fault, not the PID file, so the line names no path.
    print(f"pidsafe: invalid argument: {reason}", file=sys.stderr)


def _check_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "expect_exe": args.expect_exe,
        "expect_name": args.expect_name,
        "expect_uid": args.expect_uid,
        "allow_pid1": args.allow_pid1,
        "allow_self": args.allow_self,
    }


class _Countdown:
    """One status line on a terminal, rewritten in place while stop waits."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.line = ""

    def __call__(self, progress: StopProgress) -> None:
        sent = "no signal sent" if progress.signal is None else progress.signal.name
        line = (
            f"pidsafe: PID {progress.pid}: {sent}, waiting for it to exit: "
            f"{math.ceil(progress.remaining)} s of {progress.timeout:g} s left"
        )
        if line != self.line:
            padding = " " * max(len(self.line) - len(line), 0)
            self.stream.write(f"\r{line}{padding}")
            self.stream.flush()
            self.line = line

    def clear(self) -> None:
        if self.line:
            self.stream.write("\r" + " " * len(self.line) + "\r")
            self.stream.flush()
            self.line = ""


def _stop_json(result: StopResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "pid": result.pid,
        "outcome": result.outcome,
        "exit_code": result.exit_code,
        "signals": [
            {"signal": sent.signal.name, "time": sent.time} for sent in result.signals
        ],
        "removed": result.removed,
        "reason": result.reason,
        "kept_reason": result.kept_reason,
        "removed_by_holder": result.removed_by_holder,
    }


def _file_note(result: StopResult) -> str:
    if result.removed:
        return "; removed the PID file"
    if result.removed_by_holder:
        return "; its supervisor removed the PID file"
    if result.kept_reason is not None:
        return f"; kept the PID file ({result.kept_reason})"
    return ""


def _print_stop(result: StopResult, schedule: str) -> None:
    note = _file_note(result)
    if result.outcome == "stopped":
        sent = ", ".join(sent.signal.name for sent in result.signals)
        print(f"{result.path}: stopped PID {result.pid} (sent {sent}){note}")
    elif result.outcome == "not_running":
        print(f"{result.path}: nothing to stop: {result.reason}{note}")
    elif result.outcome == "still_running":
        print(
            f"pidsafe: PID file {result.path}: PID {result.pid} is still "
            f"running after the schedule {schedule}",
            file=sys.stderr,
        )
    else:
        print(f"pidsafe: PID file {result.path}: {result.reason}", file=sys.stderr)


def _run_stop(args: argparse.Namespace) -> int:
    schedule = DEFAULT_SCHEDULE if args.retry is None else args.retry
    countdown = _Countdown(sys.stderr) if sys.stderr.isatty() else None
    try:
        result = stop(
            args.path,
            schedule=schedule,
            signal=args.signal,
            progress=countdown,
            **_check_options(args),
        )
    except PidfileError as exc:
        _error(exc, args.json)
        return 3
    except (OSError, ValueError) as exc:
        _argument_error(args.path, exc, args.json)
        return 3
    finally:
        if countdown is not None:
            countdown.clear()
    if args.json:
        _print_json(_stop_json(result))
    else:
        _print_stop(result, schedule)
    return result.exit_code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _run_signal(args: argparse.Namespace) -> int:
    try:
        pid = signal_pidfile(args.path, args.sig, **_check_options(args))
    except (PidfileMissing, NotRunning) as exc:
        _error(exc, args.json)
        return 1
    except PidfileError as exc:
        _error(exc, args.json)
        return 3
    except (OSError, ValueError) as exc:
        _argument_error(args.path, exc, args.json)
        return 3
    name = _signal_name(signal_number(args.sig))
    if args.json:
        _print_json({"path": args.path, "pid": pid, "signal": name, "exit_code": 0})
    else:
        print(f"{args.path}: sent {name} to PID {pid}")
    return 0


def _add_process_checks(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--expect-exe",
        metavar="PATH",
        help="act only if the process runs this executable (same device and inode)",
    )
    sub.add_argument(
        "--expect-name",
        metavar="NAME",
        help="act only if the process's command name is NAME "
        "(the kernel keeps its first 15 bytes)",
    )
    sub.add_argument(
        "--expect-uid",
        metavar="UID",
        type=int,
        help="act only if the process's real user ID is UID",
    )
    sub.add_argument(
        "--allow-pid1",
        action="store_true",
        help="allow signalling PID 1, which is refused otherwise",
    )
    sub.add_argument(
        "--allow-self",
        action="store_true",
        help="allow signalling pidsafe's own process or its parent (the shell "
        "that ran it), which are refused otherwise",
    )


def _add_stop_commands(commands: Any) -> None:
    halt = commands.add_parser(
        "stop",
        help="signal the recorded process until it exits, then remove the file",
        description=(
            "Signal the process named by PATH, following the --retry schedule, "
            "until it exits, then remove PATH if it is stale and trusted. The "
            "process must hold PATH's lock itself or have started before PATH "
            "was last written; PID 1, pidsafe itself, its parent shell, "
            "threads and kernel threads are refused. Exit codes: 0 stopped, "
            "1 nothing to stop, 2 still running when the schedule ended, 3 "
            "refused or failed."
        ),
    )
    halt.add_argument("path", metavar="PATH", help="the PID file")
    halt.add_argument(
        "--retry",
        metavar="SCHEDULE",
        help="signals and waits separated by '/', as start-stop-daemon's "
        f"--retry: SIG/SECONDS/SIG/SECONDS, e.g. {DEFAULT_SCHEDULE} (the "
        "default); a single number N means SIG/N/KILL/N",
    )
    halt.add_argument(
        "--signal",
        metavar="SIG",
        help="the stop signal, TERM by default: it replaces TERM in the "
        "default schedule and in the SIG/N/KILL/N of --retry N",
    )
    _add_process_checks(halt)
    halt.add_argument("--json", action="store_true", help="print one JSON object")
    halt.set_defaults(handler=_run_stop)

    send = commands.add_parser(
        "signal", help="send one signal to the recorded process after the checks"
    )
    send.add_argument("path", metavar="PATH", help="the PID file")
    send.add_argument(
        "sig", metavar="SIG", help="signal name or number (0 only runs the checks)"
    )
    _add_process_checks(send)
    send.add_argument("--json", action="store_true", help="print one JSON object")
    send.set_defaults(handler=_run_signal)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for the ``pidsafe`` command."""
    parser = argparse.ArgumentParser(
        prog="pidsafe",
        description="Create, hold, read, check and remove PID files safely.",
    )
    parser.add_argument("--version", action="version", version=f"pidsafe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    read = commands.add_parser("read", help="print the PID in a PID file")
    read.add_argument(
        "--strict",
        action="store_true",
        help="fail unless the file and its directories are trusted",
    )
    read.set_defaults(handler=_run_read)

    check = commands.add_parser(
        "status", help="report whether the recorded process is running"
    )
    check.set_defaults(handler=_run_status)

    clean = commands.add_parser(
        "clean", help="remove the PID file if its process is not running"
    )
    clean.set_defaults(handler=_run_clean)

    runtime = commands.add_parser(
        "runtime-dir", help="print (and create) a private runtime directory"
    )
    runtime.add_argument("app", metavar="APP", help="application name")
    runtime.add_argument(
        "--env-var",
        metavar="NAME",
        help="environment variable that overrides the directory when set",
    )
    runtime.add_argument(
        "--no-create", action="store_true", help="fail instead of creating it"
    )
    runtime.set_defaults(handler=_run_runtime_dir)

    _add_run(commands)

    for sub in (read, check, clean):
        sub.add_argument("path", metavar="PATH", help="the PID file")
        sub.add_argument("--json", action="store_true", help="print one JSON object")
    _add_stop_commands(commands)
    return parser


# Exit code of each command for a failure its handler did not expect.
# Python's own exit code for an uncaught exception is 1, which status would
# report as "stale" and stop as "nothing to stop".
_UNEXPECTED_FAILURE_CODES: Final[dict[str, int]] = {
    "status": 4,
    "clean": 4,
    "stop": 3,
    "signal": 3,
    "run": 125,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` and return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except OSError as exc:
        print(f"pidsafe {args.command}: unexpected error: {exc}", file=sys.stderr)
        return _UNEXPECTED_FAILURE_CODES.get(args.command, 1)
    return code
