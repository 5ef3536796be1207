"""Choosing a private runtime directory for an application's PID files.

Candidates, in order: an override variable named by the caller, then
``$XDG_RUNTIME_DIR/<app>``, then ``/run/user/<uid>/<app>``, then
``/run/<app>`` for root, then ``<tempdir>/<app>-<uid>``. Each is validated
through the secure resolver before use: it must be a real directory (not a
symlink), owned by the effective uid, writable by nobody else, on a path
that only trusted users could have changed. A directory that fails is an
error, never a reason to try a less private place, because the usual cause
is an attacker who created the name first (in a shared temporary
directory) or a misconfigured override.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from ._errors import PidfileError
from ._path import Directory, open_parent

_DIR_FLAGS: Final = (
    getattr(os, "O_PATH", os.O_RDONLY)
    | getattr(os, "O_DIRECTORY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


class RuntimeDirError(PidfileError):
    """A runtime directory candidate is missing, unsafe or not a directory.

    `path` is the directory, and `reason` names the variable or rule that
    produced it. `errno` is ENOENT for a missing directory, else EPERM or
    the failed system call's errno.
    """

    default_errno = errno.EPERM

    def __str__(self) -> str:
        return f"runtime directory {self.path}: {self.reason}"


def _check_app(app: str) -> None:
    if not app or "/" in app or app in (".", "..") or "\0" in app:
        raise ValueError(f"application name {app!r} must be one file name")


def _validate(path: str, create: bool, source: str) -> Path:
    """Return `path` after checking it is a private directory of ours.

    Creates the last component with mode 0700 when `create` is set and it
    is missing. `source` names where the path came from, for messages.
    """
    euid = os.geteuid()
    # "/run/user/1000/" names the same directory as "/run/user/1000", but
    # open_parent rejects a path that ends in "/" as naming no file.
    trimmed = path.rstrip("/") or "/"
    try:
        directory, name, shown = open_parent(trimmed, (0, euid))
        try:
            _validate_at(directory, name, shown, create, source, euid)
        finally:
            os.close(directory.fd)
    except RuntimeDirError:
        raise
    except PidfileError as exc:
        # Name the variable or rule the path came from, so that a bad
        # override is traced to its setting rather than to pidsafe.
        reason = f"{source}: {exc.reason}"
        raise RuntimeDirError(exc.path, reason, exc.errno) from exc
    return Path(path)


def _validate_at(
    directory: Directory,
    name: str,
    shown: str,
    create: bool,
    source: str,
    euid: int,
) -> None:
    if directory.reason is not None:
        raise RuntimeDirError(shown, f"{source} is unsafe: {directory.reason}")
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=directory.fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RuntimeDirError(
                shown, f"{source} cannot be created: {exc.strerror}", exc.errno
            ) from None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=directory.fd)
    except FileNotFoundError:
        raise RuntimeDirError(shown, f"{source} does not exist", errno.ENOENT) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RuntimeDirError(
                shown, f"{source} is a symlink or not a directory"
            ) from None
        raise PidfileError(shown, str(exc.strerror), exc.errno) from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != euid:
        raise RuntimeDirError(
            shown,
            f"{source} is owned by uid {st.st_uid}, not by uid {euid}; "
            "someone else may have created it first",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeDirError(
            shown,
            f"{source} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o})",
        )


def _usable_base(path: str) -> bool:
    """Return whether `path` exists as a directory (symlinks followed)."""
    return os.path.isdir(path)


def runtime_dir(
    app: str,
    *,
    env_var: str | None = None,
    create: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Return a private directory for `app`'s PID files, creating it.

    Tries, in order: ``$<env_var>`` when `env_var` is given and set (used as
    the directory itself), ``$XDG_RUNTIME_DIR/<app>`` (when that variable is
    an absolute path; the XDG specification says to ignore a relative one),
    ``/run/user/<uid>/<app>``, ``/run/<app>`` when running as root, and
    ``<tempdir>/<app>-<uid>``. The first candidate whose base exists is
    validated; the result is never a silent fallback. With `create`, a
    missing final directory is created with mode 0700.

    Raises `RuntimeDirError` naming the directory and the variable or rule
    it came from when the candidate is a symlink, not owned by the effective
    uid, writable by others, on an unsafe path, or missing (its parent is
    never created, nor the directory itself unless `create` is set).
    """
    _check_app(app)
    env = os.environ if environ is None else environ
    uid = os.geteuid()

    if env_var is not None and env.get(env_var):
        return _validate(env[env_var], create, f"${env_var}={env[env_var]}")
    xdg = env.get("XDG_RUNTIME_DIR")
    # The XDG Base Directory specification says to ignore a relative path.
    if xdg and os.path.isabs(xdg):
        _validate(xdg, False, f"$XDG_RUNTIME_DIR={xdg}")
        return _validate(
            os.path.join(xdg, app), create, "the directory under $XDG_RUNTIME_DIR"
        )
    user_run = f"/run/user/{uid}"
    if _usable_base(user_run):
        _validate(user_run, False, "the user's runtime directory")
        return _validate(f"{user_run}/{app}", create, "the directory under /run/user")
    if uid == 0 and _usable_base("/run"):
        return _validate(f"/run/{app}", create, "root's directory under /run")
    temporary = os.path.join(tempfile.gettempdir(), f"{app}-{uid}")
    return _validate(temporary, create, "per-user temporary directory")
