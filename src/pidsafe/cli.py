"""The ``pidsafe`` command.

Exit codes follow what init scripts expect. ``status`` uses the LSB codes:
0 running, 1 dead but the file exists, 3 no file, 4 unknown or refused.
``read`` exits 0 after printing the PID, 1 when the file cannot be read
safely. ``clean`` exits 0 when the file was stale and removed or is absent,
1 when it is in use, 4 when it was refused. ``runtime-dir`` exits 0 after
printing the directory, 1 when no safe directory is available. ``run``
exits with the command's status (128 + N when signal N killed it), 3 when
another instance holds the PID file, 125 when pidsafe itself fails, and
126 or 127 when the command cannot be executed or is not found. Usage
errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._errors import PidfileError
from ._read import PidfileRecord, read_pidfile
from ._run import RunRequest, run
from ._runtime import runtime_dir
from ._status import Status, clean_pidfile, status


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` and return the exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code
