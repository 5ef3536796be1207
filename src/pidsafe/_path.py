"""Secure path resolution and the trust policy.

Design note. A PID read from a file is a claim made by whoever could write
that file or any directory on its path. Asking the kernel to resolve the path
in one ``open()`` gives no chance to see who that was, and checking with
``lstat()`` first leaves a gap between the check and the open in which a
parent directory can be swapped for a symlink. So the resolver walks the path
itself, one component at a time, through directory file descriptors opened
with ``O_NOFOLLOW|O_DIRECTORY`` (and ``O_PATH`` where the platform has it,
which needs search but not read permission), and ``fstat``s each one. Every
later step (open, stat, unlink) is relative to the final directory fd, so a
rename higher up after the walk cannot redirect it.

Trust, with root and the caller's effective uid as the default trusted users:

* A directory is secure when a trusted user owns it and neither its group
  nor others may write it.
* A sticky directory that others may write (``/tmp``) is secure for one
  entry only, and only when a trusted user owns both the directory and that
  entry, because the sticky bit stops others from renaming or removing it.
* A symlink is followed only while every directory so far is secure and the
  symlink sits where only a trusted user could have put it. The final
  component is never followed.
* A file is trusted when its chain is secure, a trusted user owns it, neither
  group nor others may write it, and it has exactly one link.

Rejected alternatives: ``openat2(RESOLVE_NO_SYMLINKS)`` cannot follow the
trusted ``/var/run -> /run`` link and reports nothing about ownership;
``os.path.realpath`` followed by checks is the check-then-use race this module
exists to remove.

What can still fail: the walk judges each directory when it passes it, so a
trusted user who later makes a directory writable is not noticed. A directory
that the caller cannot search yields `PidfilePermissionError`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Final, NamedTuple, Union

from ._errors import (
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfilePermissionError,
    UnsafeSymlink,
    UnsupportedPlatform,
)

PathArg = Union[str, "os.PathLike[str]"]

#: True where every operation resolves paths through directory file
#: descriptors, so that no symlink swap in a parent directory can redirect a
#: read or a removal. Where it is False (platforms without ``openat`` and
#: ``unlinkat``, such as Windows), file operations raise `UnsupportedPlatform`
#: instead of falling back to a racy path-based walk.
AVOIDS_SYMLINK_ATTACKS: Final[bool] = (
    {os.open, os.stat, os.unlink, os.readlink} <= os.supports_dir_fd
    and os.stat in os.supports_follow_symlinks
    and hasattr(os, "O_NOFOLLOW")
    and hasattr(os, "O_DIRECTORY")
)

#: True where directories are opened with ``O_PATH``, which needs only search
#: permission. Without it (macOS, the BSDs) each directory on the path must
#: also be readable by the caller.
USES_O_PATH: Final[bool] = hasattr(os, "O_PATH")

#: Symlink expansions allowed in one resolution, as Linux's ELOOP limit.
MAX_SYMLINKS: Final = 40

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS: Final = (
    getattr(os, "O_PATH", os.O_RDONLY)
    | getattr(os, "O_DIRECTORY", 0)
    | _NOFOLLOW
    | getattr(os, "O_CLOEXEC", 0)
)
_WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH


def default_trusted_uids() -> frozenset[int]:
    """Return the default trusted users: root and the effective uid."""
    return frozenset((0, os.geteuid()))


def as_trusted(uids: Iterable[int] | None) -> frozenset[int]:
    """Return `uids` as a frozenset, or the default set when it is None."""
    return default_trusted_uids() if uids is None else frozenset(uids)


def require_support(path: str) -> None:
    """Raise `UnsupportedPlatform` unless the secure walk works here."""
    if not AVOIDS_SYMLINK_ATTACKS:
        raise UnsupportedPlatform(
            path,
            "this platform lacks openat/unlinkat with O_NOFOLLOW, "
            "so pidsafe cannot open PID files safely here",
        )


def describe_mode(mode: int) -> str:
    """Name a file type for messages: "FIFO", "socket", "directory", ..."""
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"


def _writers(mode: int) -> str:
    if mode & stat.S_IWGRP and mode & stat.S_IWOTH:
        return "group and others"
    return "group" if mode & stat.S_IWGRP else "others"


class _Step(NamedTuple):
    """One directory on the walk: its fd, physical path and verdict so far."""

    fd: int  # open only while this step is the top of the walk's stack
    path: str
    reason: str | None  # first reason the chain up to here is insecure
    shared_sticky: bool  # sticky and writable by others, like /tmp
    dev: int  # st_dev and st_ino from the fstat that judged the directory
    ino: int


class Directory(NamedTuple):
    """A resolved directory. The caller owns `fd` and must close it."""

    fd: int
    path: str
    reason: str | None
    shared_sticky: bool
    dev: int
    ino: int


def _join(parent: str, name: str) -> str:
    return parent + name if parent.endswith("/") else f"{parent}/{name}"


def _judge_directory(
    fd: int,
    st: os.stat_result,
    path: str,
    reason: str | None,
    trusted: frozenset[int],
) -> _Step:
    """Return the walk step for directory `fd`, whose fstat is `st`.

    `reason` is the verdict on the chain above it. A chain already found
    insecure keeps its first reason.
    """
    mode = st.st_mode
    writable = mode & _WRITABLE_BY_OTHERS
    sticky = mode & stat.S_ISVTX
    if reason is None:
        if st.st_uid not in trusted:
            reason = f"directory {path} is owned by uid {st.st_uid}"
        elif writable and not sticky:
            reason = f"directory {path} is writable by {_writers(mode)}"
    shared_sticky = bool(writable and sticky)
    return _Step(fd, path, reason, shared_sticky, st.st_dev, st.st_ino)


def entry_reason(
    parent_path: str,
    shared_sticky: bool,
    name: str,
    uid: int,
    trusted: frozenset[int],
) -> str | None:
    """Return why an entry owned by `uid` is insecure in its directory."""
    if shared_sticky and uid not in trusted:
        return (
            f"{_join(parent_path, name)} is owned by uid {uid} "
            f"in the shared directory {parent_path}"
        )
    return None


def _open_error(exc: OSError, path: str, parent: str, display: str) -> PidfileError:
    if exc.errno == errno.ENOENT:
        return PidfileMissing(display, f"directory {path} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PidfilePermissionError(
            display, f"permission denied searching directory {parent}"
        )
    if exc.errno == errno.ENOTDIR:
        return PidfileError(display, f"{path} is not a directory", errno.ENOTDIR)
    return PidfileError(
        display, f"cannot open directory {path}: {exc.strerror}", exc.errno
    )


def _symlink_reason(
    parent: _Step, path: str, uid: int, trusted: frozenset[int]
) -> str | None:
    """Return why the symlink `path` must not be followed, or None."""
    owner = f"{path} is a symlink owned by uid {uid}"
    if parent.reason is not None:
        return (
            f"{owner} on an unsafe path ({parent.reason}), so an untrusted "
            "user could have planted it, so it is not followed"
        )
    if uid not in trusted:
        where = (
            f"in the shared directory {parent.path}"
            if parent.shared_sticky
            else "who is not a trusted user"
        )
        return f"{owner} {where}, so it is not followed"
    return None


class _Walk:
    """State of one resolution: the directories entered, innermost last.

    Only the innermost directory's fd is open. Keeping every fd open would
    make a deep path fail with EMFILE long before the kernel's own limits,
    so ".." reopens the parent relative to the child instead.
    """

    def __init__(self, display: str, trusted: frozenset[int]) -> None:
        self.display = display
        self.trusted = trusted
        self.stack: list[_Step] = []
        self.expansions = 0

    def close(self) -> None:
        if self.stack:
            os.close(self.stack[-1].fd)
        self.stack.clear()

    def take_top(self) -> _Step:
        """Remove and return the innermost step; the caller owns its fd."""
        top = self.stack[-1]
        self.stack.clear()
        return top

    def leave(self) -> None:
        """Go to the parent directory, as ".." does (not above "/")."""
        if len(self.stack) < 2:
            return
        child = self.stack.pop()
        parent = self.stack[-1]
        try:
            fd = os.open("..", _DIR_FLAGS, dir_fd=child.fd)
        except OSError as exc:
            self.stack.append(child)
            raise _open_error(exc, parent.path, child.path, self.display) from None
        os.close(child.fd)
        self.stack[-1] = parent._replace(fd=fd)
        # The judged parent must be the one ".." leads to now; a rename of
        # the child since it was entered would lead somewhere unjudged.
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino):
            raise PidfileError(
                self.display,
                f"{child.path} moved while being resolved",
                errno.EAGAIN,
            )

    def enter_root(self) -> None:
        """Reset the walk to "/", as an absolute path or symlink does."""
        self.close()
        try:
            fd = os.open("/", _DIR_FLAGS)
        except OSError as exc:
            # "/" always exists; this is EMFILE, ENFILE or ENOMEM.
            raise PidfileError(
                self.display, f"cannot open directory /: {exc.strerror}", exc.errno
            ) from None
        try:
            root = _judge_directory(fd, os.fstat(fd), "/", None, self.trusted)
        except BaseException:
            os.close(fd)
            raise
        self.stack.append(root)

    def enter(self, name: str, pending: list[str]) -> None:
        """Step into `name`, or expand it onto `pending` if it is a symlink.

        `pending` lists the components still to walk, the next one last.
        """
        parent = self.stack[-1]
        path = _join(parent.path, name)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise _open_error(exc, path, parent.path, self.display) from None
            # A user who may write the parent can remove or replace the entry
            # after the failed open, so this lstat can fail as well.
            try:
                st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            except OSError as lstat_exc:
                raise _open_error(lstat_exc, path, parent.path, self.display) from None
            if not stat.S_ISLNK(st.st_mode):
                raise _open_error(exc, path, parent.path, self.display) from None
            self.expand(name, path, st, pending)
            return
        # Build each step once, because this runs for every directory of every
        # cold read, and NamedTuple._replace takes longer than the fstat does
        # (1.2 against 0.8 µs on CPython 3.11, on the bench/README.md machine).
        try:
            st = os.fstat(fd)
            step = _judge_directory(fd, st, path, parent.reason, self.trusted)
            if step.reason is None and parent.shared_sticky:
                sticky_reason = entry_reason(
                    parent.path, True, name, st.st_uid, self.trusted
                )
                if sticky_reason is not None:
                    step = step._replace(reason=sticky_reason)
        except BaseException:
            os.close(fd)
            raise
        os.close(parent.fd)
        self.stack.append(step)

    def expand(
        self, name: str, path: str, st: os.stat_result, pending: list[str]
    ) -> None:
        """Follow the symlink `name` if the policy allows, else raise."""
        parent = self.stack[-1]
        # A symlink placed by an untrusted user could point anywhere, and an
        # untrusted parent could swap a trusted symlink for its own, so both
        # the chain and the symlink's own position must be secure.
        unsafe = _symlink_reason(parent, path, st.st_uid, self.trusted)
        if unsafe is not None:
            raise UnsafeSymlink(self.display, unsafe)
        self.expansions += 1
        if self.expansions > MAX_SYMLINKS:
            raise PidfileError(
                self.display,
                f"more than {MAX_SYMLINKS} symlinks while resolving {path}",
                errno.ELOOP,
            )
        try:
            target = os.readlink(name, dir_fd=parent.fd)
        except OSError as exc:
            # The symlink was removed or replaced since it was examined.
            raise PidfileError(
                self.display,
                f"{path} changed while being resolved: {exc.strerror}",
                errno.EAGAIN,
            ) from None
        if target.startswith("/"):
            self.enter_root()
        pending.extend(reversed(_split(target)))

    def walk(self, components: list[str]) -> None:
        # `pending` is kept last-component-first, so that taking the next
        # component and inserting a symlink's target are cheap at its end:
        # taking from the front made a path of n components cost n**2.
        pending = components[::-1]
        while pending:
            name = pending.pop()
            if name == "..":
                self.leave()
            else:
                self.enter(name, pending)


def _split(text: str) -> list[str]:
    return [part for part in text.split("/") if part not in ("", ".")]


def _display_path(path: PathArg) -> str:
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(
            f"PID file path must be str or os.PathLike[str], not {type(text).__name__}"
        )
    return text


def open_directory(
    path: PathArg,
    trusted_uids: Iterable[int] | None = None,
    *,
    display: str | None = None,
) -> Directory:
    """Resolve the directory `path` securely and return it with its verdict.

    The caller owns the returned fd. Raises `PidfileMissing`,
    `PidfilePermissionError`, `UnsafeSymlink` or `PidfileError` naming the
    component that failed. Relative paths start at the current directory,
    whose own ancestry is judged by walking its physical path from "/".
    """
    text = _display_path(path)
    shown = text if display is None else display
    require_support(shown)
    if "\0" in text:
        raise PidfileError(shown, "path contains a NUL byte", errno.EINVAL)
    trusted = as_trusted(trusted_uids)
    walk = _Walk(shown, trusted)
    try:
        walk.enter_root()
        if not text.startswith("/"):
            _enter_cwd(walk)
        walk.walk(_split(text))
    except BaseException:
        walk.close()
        raise
    top = walk.take_top()
    return Directory(top.fd, top.path, top.reason, top.shared_sticky, top.dev, top.ino)


def _enter_cwd(walk: _Walk) -> None:
    try:
        cwd = os.getcwd()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise PidfileMissing(
                walk.display, "the current directory was removed"
            ) from None
        raise PidfileError(
            walk.display,
            f"cannot resolve the current directory: {exc.strerror}",
            exc.errno,
        ) from None
    walk.walk(_split(cwd))
    # Every lookup of a relative path, even of ".", needs search permission
    # on the current directory, so the kernel's EACCES is the right error.
    try:
        here = os.stat(".")
    except OSError as exc:
        raise _cwd_error(exc, cwd, walk.display) from None
    there = walk.stack[-1]
    if (here.st_dev, here.st_ino) != (there.dev, there.ino):
        raise PidfileError(
            walk.display,
            f"the current directory moved away from {cwd} during resolution",
            errno.EAGAIN,
        )


def _cwd_error(exc: OSError, cwd: str, display: str) -> PidfileError:
    if exc.errno == errno.ENOENT:
        return PidfileMissing(display, "the current directory was removed")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PidfilePermissionError(
            display, f"permission denied searching the current directory {cwd}"
        )
    return PidfileError(
        display, f"cannot stat the current directory {cwd}: {exc.strerror}", exc.errno
    )


def rejudge_directory(
    directory: Directory, st: os.stat_result, trusted: frozenset[int]
) -> Directory:
    """Return `directory` judged again from its current owner and mode.

    The chain above it keeps its old verdict: only an fstat of the held fd
    is available, and a directory found insecure stays insecure.
    """
    step = _judge_directory(directory.fd, st, directory.path, directory.reason, trusted)
    return directory._replace(reason=step.reason, shared_sticky=step.shared_sticky)


def split_leaf(path: PathArg) -> tuple[str, str, str]:
    """Split `path` into (display path, directory part, final name).

    Raises `PidfileMissing` for an empty path, as the kernel's ENOENT does.
    Raises `PidfileNotRegular` when the path ends in "/", "." or "..",
    because such a path can only name a directory. Raises `PidfileError` when
    it contains a NUL byte, which no file name can.
    """
    display = _display_path(path)
    if not display:
        raise PidfileMissing(display, "path is empty")
    if "\0" in display:
        raise PidfileError(display, "path contains a NUL byte", errno.EINVAL)
    head, _, name = display.rpartition("/")
    if name in ("", ".", ".."):
        raise PidfileNotRegular(display, "path names a directory, not a file")
    if not head and display.startswith("/"):
        head = "/"
    return display, head or ".", name


def open_parent(
    path: PathArg, trusted_uids: Iterable[int] | None = None
) -> tuple[Directory, str, str]:
    """Resolve the directory holding `path`; return it, the name and display.

    This is the one place where pidsafe opens the directory of a PID file:
    reads, removals and holds all start here. The caller owns the fd.
    """
    display, head, name = split_leaf(path)
    directory = open_directory(head, trusted_uids, display=display)
    return directory, name, display


def file_reason(
    directory: Directory,
    name: str,
    st: os.stat_result,
    trusted: frozenset[int],
) -> str | None:
    """Return the first reason the file is untrusted, or None if trusted."""
    reason = directory.reason or entry_reason(
        directory.path, directory.shared_sticky, name, st.st_uid, trusted
    )
    if reason is not None:
        return reason
    if st.st_uid not in trusted:
        return f"file is owned by uid {st.st_uid}"
    if st.st_mode & _WRITABLE_BY_OTHERS:
        return f"file is writable by {_writers(st.st_mode)}"
    if st.st_nlink != 1:
        return f"file has {st.st_nlink} hard links"
    return None


def location_reason(
    directory: Directory, name: str, uid: int, trusted: frozenset[int]
) -> str | None:
    """Return why nobody should act on entry `name` there, or None if safe."""
    return directory.reason or entry_reason(
        directory.path, directory.shared_sticky, name, uid, trusted
    )
