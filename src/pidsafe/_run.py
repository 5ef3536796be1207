"""Holding a PID file for a command: ``pidsafe run``.

Design note. ``pidsafe run`` works like FreeBSD's ``daemon(8)``, in one of
two modes. It always holds the file with `PidFile`, so the lock, the
identity checks and the removal rules are the library's own.

* Supervise (the default): pidsafe forks a child, writes the child's PID
  into the held file and lets the child execute the command. It passes
  SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 on to the child. When the
  child exits, pidsafe removes the file and exits with the child's status.
* Exec: pidsafe writes its own PID, clears ``FD_CLOEXEC`` on the lock's
  descriptor and executes the command in its own process, so the command
  inherits the lock and the file names it.

The supervised child does not inherit the lock. `PidFile` closes its
descriptor in every forked child, and ``O_CLOEXEC`` would close it at
``exec`` anyway. The lock therefore lives exactly as long as the
supervisor. If the supervisor is killed with SIGKILL, the file stays,
unlocked, naming a child that may still run. Readers then fall back to
the start-time rule: the child started before the file was written, so
`status` reports it running and a new start fails with `AlreadyRunning`
naming it. Once the child exits, or its PID is reused by a process that
started after the write, the next start takes the file over. The
rejected alternative, letting the child inherit the lock, would keep the
file locked by a process that never removes it and would tie the lock to
whatever processes the command forks.

The child waits on a pipe until its PID is in the file, and only then
executes the command. So the command never runs unless the file names
it, and a child that cannot be recorded is ended before it runs anything.
A second pipe, closed by ``exec`` on success, carries ``errno`` back when
the command cannot be executed, as `subprocess` does.

The child stays in the supervisor's process group, so it keeps the
terminal for interactive use. A signal sent to the whole group, such as
SIGINT from the terminal, therefore reaches the child twice: directly and
passed on.

A background run detaches with a double fork and ``setsid``, and the
launcher waits on a third pipe until the detached side reports that the
file names the running command, or why it failed.

What can still fail: a supervisor killed between forking the child and
writing its PID leaves a file naming the dead supervisor, which the next
start takes over, while the child, still waiting on the pipe, sees the
pipe close and exits without running the command.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, Literal, NoReturn, Optional, Union

from ._errors import AlreadyRunning, PidfileError
from ._hold import PidFile
from ._path import Directory, as_trusted, describe_mode, file_reason, open_parent
from ._read import logger

Mode = Literal["supervise", "exec"]

#: Signals a supervisor passes on to its child. A signal that was ignored
#: when pidsafe started (as under ``nohup``) stays ignored, and is not
#: passed on.
FORWARDED_SIGNALS: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: Exit code when another instance holds the PID file.
EXIT_HELD: Final = 3
#: Exit code when pidsafe itself fails (an unsafe PID file or log file, a
#: failed fork), as ``env``, ``nohup`` and ``timeout`` use it.
EXIT_FAILED: Final = 125
#: Exit codes when the command cannot be executed, as a POSIX shell uses
#: them: found but not executable, and not found.
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_NOT_FOUND: Final = 127

# Python ignores these at startup; a child must start with the default
# action, as subprocess's restore_signals gives it.
_PYTHON_IGNORED: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)

_HAS_WAITID: Final = hasattr(os, "waitid")

# A signal disposition as signal.getsignal returns it: a Python handler,
# SIG_DFL, SIG_IGN, or None for a handler installed outside Python.
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

# O_NONBLOCK makes opening a FIFO with no reader fail with ENXIO instead of
# blocking; fstat then rejects any FIFO that did open.
_LOG_FLAGS: Final = (
    os.O_WRONLY
    | os.O_APPEND
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_LOG_MODE: Final = 0o600

# Messages on the report pipe from a background run to its launcher.
_READY: Final = b"ready"  # the file names the running command
_EXECUTING: Final = b"exec"  # exec mode: the file is written, exec follows


@dataclass(frozen=True)
class RunRequest:
    """The options of one ``pidsafe run``."""

    pidfile: str
    command: Sequence[str]
    mode: Mode = "supervise"
    background: bool = False
    log: str | None = None  # background only: file for the command's output


class RunFailure(Exception):
    """A failure that ends ``pidsafe run`` with `exit_code` and a message."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def run(request: RunRequest) -> int:
    """Run `request` and return the exit code for the ``pidsafe`` command.

    In the foreground this returns when the command exits (supervise mode)
    or not at all (exec mode, after a successful exec). In the background
    the launcher returns once the detached side has reported; the detached
    side returns its own exit code when its command ends. Failures are
    printed to stderr as one line.
    """
    if not request.command:
        raise ValueError("pidsafe run needs a command")
    _open_standard_fds()
    if not request.background:
        return _run_here(request, _Reporter(None))
    try:
        streams = _open_streams(request.log)
    except RunFailure as failure:
        return _Reporter(None).failed(failure)
    return _run_detached(request, streams)


def _open_standard_fds() -> None:
    """Open /dev/null on any of fds 0, 1 and 2 that is closed.

    Otherwise the lock's descriptor, a pipe or the log file could land on
    one of them, and the command would read or write it as a standard
    stream.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            # Lower numbers are open by now, so open() returns this one.
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)


# --- reporting -------------------------------------------------------------


class _Reporter:
    """The outcome of a start, sent to stderr and to a background launcher.

    `fd` is the write end of the report pipe in a detached process, and
    None in the foreground.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def started(self, message: bytes) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                # A launcher killed meanwhile cannot be told, and the
                # command must not fail for that.
                _write_all(self.fd, message + b"\n")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def failed(self, failure: RunFailure) -> int:
        """Print `failure`, send it to the launcher, and return its code."""
        print(f"pidsafe: {failure.message}", file=sys.stderr, flush=True)
        if self.fd is not None:
            line = b"%d %s\n" % (failure.exit_code, failure.message.encode())
            with contextlib.suppress(OSError):
                # A launcher that is gone has no use for the report.
                _write_all(self.fd, line)
            self.close()
        return failure.exit_code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# --- one run, in this process ----------------------------------------------


def _run_here(request: RunRequest, reporter: _Reporter) -> int:
    try:
        pidfile = _acquire(request.pidfile)
        if request.mode == "exec":
            _exec_holding(pidfile, request.command, reporter)
        return _supervise(pidfile, request.command, reporter)
    except RunFailure as failure:
        return reporter.failed(failure)


def _acquire(path: str) -> PidFile:
    pidfile = PidFile(path)
    try:
        pidfile.acquire()
    except AlreadyRunning as exc:
        raise RunFailure(EXIT_HELD, str(exc)) from None
    except PidfileError as exc:
        raise RunFailure(EXIT_FAILED, str(exc)) from None
    return pidfile


def _exec_failure(command: str, exc: OSError) -> RunFailure:
    code = EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_EXECUTE
    reason = exc.strerror or os.strerror(exc.errno or 0)
    return RunFailure(code, f"cannot execute {command}: {reason}")


def _release(pidfile: PidFile) -> None:
    try:
        pidfile.release()
    except PidfileError as exc:
        print(f"pidsafe: {exc}", file=sys.stderr, flush=True)


def _exec_holding(
    pidfile: PidFile, command: Sequence[str], reporter: _Reporter
) -> NoReturn:
    """Execute `command` in this process, which keeps holding `pidfile`.

    Never returns. When the command cannot be executed, removes the file
    and raises RunFailure.
    """
    reporter.started(_EXECUTING)
    _restore_python_ignored()
    sys.stdout.flush()
    sys.stderr.flush()
    fd = pidfile.fileno()
    # The lock's descriptor is the one thing the command must inherit; the
    # report pipe and the directory descriptor still close at exec.
    os.set_inheritable(fd, True)
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        _release(pidfile)
        raise _exec_failure(command[0], exc) from None


def _restore_python_ignored() -> None:
    for signum in _PYTHON_IGNORED:
        signal.signal(signum, signal.SIG_DFL)


# --- supervise mode --------------------------------------------------------


class _Forwarder:
    """Passes the signals in FORWARDED_SIGNALS on to the supervised child.

    The signals are blocked from `install` until `forward_to`, so that one
    arriving before the child runs the command waits in the kernel and is
    passed on then, instead of being lost.
    """

    def __init__(self) -> None:
        self.child: int | None = None
        self.saved_handlers: dict[signal.Signals, _Handler] = {}
        self.saved_mask: set[int | signal.Signals] = set()

    def install(self) -> None:
        self.saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        for signum in FORWARDED_SIGNALS:
            handler = signal.getsignal(signum)
            if handler == signal.SIG_IGN:
                continue
            signal.signal(signum, self._forward)
            self.saved_handlers[signum] = handler

    def uninstall(self) -> None:
        """Restore the handlers and the mask that `install` replaced."""
        self.child = None
        for signum, handler in self.saved_handlers.items():
            # None is a handler set outside Python, which cannot be set
            # again from here; ours stays and ignores the signal.
            if handler is not None:
                signal.signal(signum, handler)
        self.saved_handlers.clear()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        child = self.child
        if child is None:
            return
        logger.debug("passing signal %d on to child %d", signum, child)
        with contextlib.suppress(ProcessLookupError):
            # The child is not reaped yet (see _wait), so its PID cannot
            # belong to another process. Linux lets kill() succeed on a
            # zombie; a platform that reports ESRCH instead loses nothing.
            os.kill(child, signum)

    def forward_to(self, child: int) -> None:
        self.child = child
        signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)

    def stop(self) -> None:
        self.child = None

    def reset_in_child(self) -> None:
        """Give the command default signal actions and the original mask."""
        for signum in self.saved_handlers:
            signal.signal(signum, signal.SIG_DFL)
        _restore_python_ignored()
        signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)


@dataclass
class _Child:
    """A forked child waiting to execute the command, and its two pipes."""

    pid: int
    gate: int | None  # write end: one byte lets the child execute
    errors: int  # read end: errno from a failed exec, or EOF after exec

    def open_gate(self) -> None:
        assert self.gate is not None
        try:
            _write_all(self.gate, b"1")
        finally:
            self.close_gate()

    def close_gate(self) -> None:
        if self.gate is not None:
            os.close(self.gate)
            self.gate = None

    def exec_errno(self) -> int | None:
        """Wait until the child executed the command (None) or failed."""
        try:
            data = _read_all(self.errors)
        finally:
            os.close(self.errors)
        if not data:
            return None
        return int(data)

    def reap(self) -> int:
        _, status = os.waitpid(self.pid, 0)
        return status


def _supervise(pidfile: PidFile, command: Sequence[str], reporter: _Reporter) -> int:
    """Run `command` as a child named by the held `pidfile`; return its status.

    Removes the file when the child exits, and on every failure.
    """
    forwarder = _Forwarder()
    forwarder.install()
    try:
        return _supervise_child(pidfile, command, reporter, forwarder)
    finally:
        forwarder.uninstall()


def _supervise_child(
    pidfile: PidFile,
    command: Sequence[str],
    reporter: _Reporter,
    forwarder: _Forwarder,
) -> int:
    try:
        child = _fork_child(command, forwarder)
    except OSError as exc:
        _release(pidfile)
        raise RunFailure(
            EXIT_FAILED, f"cannot start a child process: {exc.strerror}"
        ) from None
    try:
        _start_child(pidfile, child, command)
    except RunFailure:
        _release(pidfile)
        raise
    reporter.started(_READY)
    reporter.close()
    forwarder.forward_to(child.pid)
    status = _wait(child.pid, forwarder)
    _release(pidfile)
    return _exit_code(status)


def _start_child(pidfile: PidFile, child: _Child, command: Sequence[str]) -> None:
    """Write the child's PID into the file, then let it execute `command`.

    Raises RunFailure, after reaping the child, when the PID cannot be
    written or the command cannot be executed.
    """
    try:
        pidfile._replace_pid(child.pid)
    except PidfileError as exc:
        # Closing the gate unopened makes the child exit without running
        # the command.
        child.close_gate()
        os.close(child.errors)
        child.reap()
        raise RunFailure(EXIT_FAILED, str(exc)) from None
    child.open_gate()
    error = child.exec_errno()
    if error is not None:
        child.reap()
        raise _exec_failure(command[0], OSError(error, os.strerror(error)))
    logger.debug("child %d is running %s", child.pid, command[0])


def _fork_child(command: Sequence[str], forwarder: _Forwarder) -> _Child:
    gate_read, gate_write = os.pipe()
    errors_read, errors_write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (gate_read, gate_write, errors_read, errors_write):
            os.close(fd)
        raise
    if pid == 0:
        os.close(gate_write)
        os.close(errors_read)
        _child_main(command, forwarder, gate_read, errors_write)
    os.close(gate_read)
    os.close(errors_write)
    return _Child(pid, gate_write, errors_read)


def _child_main(
    command: Sequence[str], forwarder: _Forwarder, gate: int, errors: int
) -> NoReturn:
    """Wait at the gate, then execute `command`; never return.

    `PidFile`'s fork handler has already closed the lock's descriptor here.
    """
    try:
        released = os.read(gate, 1) == b"1"
    except BaseException:
        os._exit(EXIT_FAILED)
    if not released:
        # The supervisor could not record this child, or died.
        os._exit(EXIT_FAILED)
    try:
        forwarder.reset_in_child()
        os.execvp(command[0], list(command))
    except OSError as exc:
        with contextlib.suppress(OSError):
            # If the supervisor is gone, nobody reads the errno anyway.
            _write_all(errors, b"%d" % (exc.errno or errno.EINVAL))
        os._exit(_exec_failure(command[0], exc).exit_code)
    except BaseException:
        os._exit(EXIT_FAILED)
    os._exit(EXIT_FAILED)  # execvp does not return; this satisfies NoReturn


def _wait(pid: int, forwarder: _Forwarder) -> int:
    """Wait for the child to exit while forwarding signals; return its status."""
    if _HAS_WAITID:
        # WNOWAIT leaves the exited child a zombie, so its PID stays
        # reserved until the reap below, and a signal handler that runs in
        # between still addresses this child and no other process.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    # NOTE: without waitid, a signal handled between the reap and stop()
    # could reach a process that reused the PID in that instant.
    forwarder.stop()
    _, status = os.waitpid(pid, 0)
    return status


def _exit_code(status: int) -> int:
    """Map a wait status to a shell's exit code: 128 + N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


# --- background mode -------------------------------------------------------


@dataclass(frozen=True)
class _Streams:
    """Descriptors for a detached process's stdin, stdout and stderr."""

    stdin: int
    output: int


def _open_streams(log: str | None) -> _Streams:
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        output = (
            os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            if log is None
            else open_log(log)
        )
    except BaseException:
        os.close(stdin)
        raise
    return _Streams(stdin, output)


def open_log(path: str) -> int:
    """Open or create the log file at `path` for appending; return the fd.

    The file is created with mode 0600. Its directory is resolved like a
    PID file's, and the same rules apply: the path must be trusted, the
    name must not be a symlink, and the file must be a regular file that a
    trusted user owns, that nobody else may write, and that has one link.
    Raises RunFailure naming the path and the reason.
    """
    trusted = as_trusted(None)
    try:
        directory, name, display = open_parent(path, trusted)
    except PidfileError as exc:
        raise RunFailure(EXIT_FAILED, f"log file {path}: {exc.reason}") from None
    try:
        if directory.reason is not None:
            raise _unsafe_log(display, directory.reason)
        fd = _open_log_at(directory.fd, name, display)
        try:
            _check_log(fd, directory, name, display, trusted)
        except BaseException:
            os.close(fd)
            raise
    finally:
        os.close(directory.fd)
    return fd


def _unsafe_log(display: str, reason: str) -> RunFailure:
    return RunFailure(EXIT_FAILED, f"log file {display}: unsafe to write: {reason}")


def _check_log(
    fd: int, directory: Directory, name: str, display: str, trusted: frozenset[int]
) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = describe_mode(st.st_mode)
        raise RunFailure(
            EXIT_FAILED, f"log file {display}: is a {kind}, not a regular file"
        )
    reason = file_reason(directory, name, st, trusted)
    if reason is not None:
        raise _unsafe_log(display, reason)
    os.set_blocking(fd, True)


def _open_log_at(dir_fd: int, name: str, display: str) -> int:
    try:
        return os.open(name, _LOG_FLAGS, _LOG_MODE, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            reason = "is a symlink, which is never followed"
        elif exc.errno == errno.ENXIO:
            reason = "is a FIFO or socket, not a regular file"
        else:
            reason = f"cannot be opened: {exc.strerror}"
        raise RunFailure(EXIT_FAILED, f"log file {display}: {reason}") from None


def _run_detached(request: RunRequest, streams: _Streams) -> int:
    """Run `request` in a detached process; return the exit code.

    The launcher returns the code that the detached side reported. The
    detached side, which also returns here, returns the code of its run.
    """
    report_read, report_write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        first = os.fork()
    except OSError as exc:
        for fd in (report_read, report_write, streams.stdin, streams.output):
            os.close(fd)
        failure = RunFailure(EXIT_FAILED, f"cannot detach: {exc.strerror}")
        return _Reporter(None).failed(failure)
    if first != 0:
        os.close(report_write)
        os.close(streams.stdin)
        os.close(streams.output)
        return _await_report(first, report_read, request.pidfile)
    os.close(report_read)
    _detach(streams, report_write)
    return _run_here(request, _Reporter(report_write))


def _detach(streams: _Streams, report: int) -> None:
    """Leave the launcher's session and terminal, as the second child.

    The first child starts a new session, forks again and exits at once.
    The second child is not a session leader, so opening a terminal can
    never make that terminal its controlling one.
    """
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        os.dup2(streams.stdin, 0)
        os.dup2(streams.output, 1)
        os.dup2(streams.output, 2)
    except OSError as exc:
        # Report through the pipe alone, because stderr may still be the
        # launcher's, which prints the report itself.
        line = f"{EXIT_FAILED} cannot detach: {exc.strerror}\n"
        with contextlib.suppress(OSError):
            _write_all(report, line.encode())
        os._exit(EXIT_FAILED)
    os.close(streams.stdin)
    os.close(streams.output)


def _await_report(first: int, report: int, pidfile: str) -> int:
    """Return the exit code that the detached side reports, printing a failure."""
    try:
        data = _read_all(report)
    finally:
        os.close(report)
    with contextlib.suppress(ChildProcessError):
        # With SIGCHLD ignored, the kernel has reaped the first child.
        os.waitpid(first, 0)
    lines = data.splitlines()
    last = lines[-1] if lines else b""
    if last in (_READY, _EXECUTING):
        return 0
    code, _, message = last.partition(b" ")
    if code.isdigit() and message:
        print(f"pidsafe: {message.decode(errors='replace')}", file=sys.stderr)
        return int(code)
    print(
        f"pidsafe: PID file {pidfile}: the background process exited "
        "before reporting whether the command started",
        file=sys.stderr,
    )
    return EXIT_FAILED
