"""Steps that the attack tests run as an unprivileged user.

The tests pass this file's source to ``python -I -c`` in a child process
that already runs as the user, with a JSON list of steps as the only
argument. Each step is ``[name, *arguments]``. The child runs the steps in
order and prints a JSON list with one result per step as its last line.
A step that raises ends the child with a traceback and a non-zero status.

This file only uses the standard library, so that it also runs on an
interpreter other than the one running the tests.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import time
from typing import Any, Callable

# renameat2(2) is in glibc 2.28 and later, and Python's os module has no
# binding for it.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(first: str, second: str) -> None:
    """Swap two names atomically, even a directory with a symlink."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), first, None, second)


def write_file(path: str, text: str, mode: str) -> None:
    """Create `path` with `text`, failing if anything has that name already."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, int(mode, 8))
    finally:
        os.close(fd)


def make_directory(path: str, mode: str) -> None:
    os.mkdir(path)
    os.chmod(path, int(mode, 8))


def change_mode(path: str, mode: str) -> None:
    os.chmod(path, int(mode, 8), follow_symlinks=False)


def restore_symlink(first: str, second: str, target: str) -> None:
    """Put a symlink to `target` back at `second` if neither name has one.

    A flip that lands between the victim's last check and its unlink makes
    the victim unlink the symlink instead of its own file. The flip loop
    then needs a new symlink to keep flipping.
    """
    if os.path.islink(first) or os.path.islink(second):
        return
    try:
        os.unlink(second)
    except FileNotFoundError:
        pass
    os.symlink(target, second)


def flip(first: str, second: str, seconds: float, target: str | None) -> int:
    """Swap two names for `seconds`; return how many swaps succeeded.

    Prints "ready" once before the first swap, so the caller can start
    racing. A swap fails while the victim has removed one of the names; with
    `target` set, a missing symlink is created again (see `restore_symlink`).
    """
    print("ready", flush=True)
    flips = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            exchange(first, second)
        except FileNotFoundError:
            if target is not None:
                restore_symlink(first, second, target)
            continue
        flips += 1
    return flips


def call_pidsafe(source_dir: str, function: str, path: str) -> dict[str, Any]:
    """Call pidsafe's `function` on `path` as this user; return what it did."""
    sys.path.insert(0, source_dir)
    pidsafe = importlib.import_module("pidsafe")

    try:
        result = getattr(pidsafe, function)(path)
    except pidsafe.PidfileError as exc:
        return {
            "error": type(exc).__name__,
            "message": str(exc),
            "errno": exc.errno,
        }
    if isinstance(result, pidsafe.PidfileRecord):
        return {"pid": result.pid, "trusted": result.trusted}
    if isinstance(result, pidsafe.Status):
        return {"state": result.state, "pid": result.pid, "reason": result.reason}
    return {"result": result}


STEPS: dict[str, Callable[..., Any]] = {
    "symlink": os.symlink,
    "write": write_file,
    "mkdir": make_directory,
    "chmod": change_mode,
    "rename": os.rename,
    "chdir": os.chdir,
    "unlink": os.unlink,
    "exchange": exchange,
    "flip": flip,
    "pidsafe": call_pidsafe,
}


def main(argv: list[str]) -> None:
    results = [STEPS[name](*arguments) for name, *arguments in json.loads(argv[0])]
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
