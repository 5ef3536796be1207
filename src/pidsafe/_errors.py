"""Exceptions raised by pidsafe.

Every class subclasses `PidfileError`, which subclasses `OSError`, so code
that already catches `OSError` around PID file handling keeps working. Each
instance carries the PID file's `path`, a human-readable `reason` and, where
one fits, an `errno`, and survives pickling (for multiprocessing workers).
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class PidfileError(OSError):
    """A PID file operation failed; `path` and `reason` say where and why."""

    default_errno: int | None = None

    def __init__(self, path: str, reason: str, errno: int | None = None) -> None:
        code = self.default_errno if errno is None else errno
        super().__init__(code, reason)
        self.path = path
        self.reason = reason
        # OSError.__init__ only fills `filename` for the 3-argument form,
        # which would also change str(); set it so tooling that reads
        # `filename` still finds the path.
        self.filename = path

    def __str__(self) -> str:
        return f"PID file {self.path}: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.errno))


class PidfileMissing(PidfileError, FileNotFoundError):
    """The PID file, or a directory on its path, does not exist."""

    default_errno = _errno.ENOENT


class PidfilePermissionError(PidfileError, PermissionError):
    """The caller may not search a directory on the path or open the file."""

    default_errno = _errno.EACCES


class PidfileSymlink(PidfileError):
    """The PID file's own name is a symbolic link, which is never followed."""

    default_errno = _errno.ELOOP


class PidfileNotRegular(PidfileError):
    """The name refers to a FIFO, socket, device or directory."""

    default_errno = _errno.EINVAL


class InvalidPidfile(PidfileError):
    """The contents are not exactly one PID in the range 1..pid_max."""

    default_errno = _errno.EINVAL


class PidfileTooLarge(InvalidPidfile):
    """The file is larger than any valid PID file can be."""

    default_errno = _errno.EFBIG


class InsecurePidfile(PidfileError):
    """Someone other than a trusted user could have written the file."""

    default_errno = _errno.EPERM


class UnsafeSymlink(InsecurePidfile):
    """A symbolic link on the path sits where an untrusted user could plant it."""


class AlreadyRunning(PidfileError):
    """Another process holds the PID file; `pid` is its PID or None."""

    default_errno = _errno.EAGAIN

    def __init__(
        self,
        path: str,
        reason: str,
        errno: int | None = None,
        pid: int | None = None,
    ) -> None:
        super().__init__(path, reason, errno)
        self.pid = pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason, self.errno, self.pid))


class IdentityMismatch(PidfileError):
    """The process with the recorded PID is not the one that wrote the file."""

    default_errno = _errno.ESRCH


class NotRunning(PidfileError, ProcessLookupError):
    """The PID file names no running process, so there is nothing to signal."""

    default_errno = _errno.ESRCH


class UnsupportedPlatform(PidfileError):
    """This platform lacks the system calls the operation needs."""

    default_errno = _errno.ENOSYS
