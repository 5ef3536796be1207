"""The PID file grammar.

A PID file contains ASCII decimal digits, optionally surrounded by ASCII
spaces or tabs, optionally followed by one ``\\n`` or ``\\r\\n``. Anything
else is rejected, because every looser parser (``int()``, ``strtol``,
``atoi``) accepts something an attacker can use: ``int()`` takes ``-1``,
``+5``, ``1_000`` and non-ASCII digits, and ``-1`` given to ``kill`` signals
every process the caller may signal.
"""

from __future__ import annotations

import functools
from typing import Final

#: Largest file accepted, in bytes. A PID has at most 7 digits on Linux
#: (pid_max is at most 2**22), so 64 bytes leaves ample room for leading
#: zeros and padding while keeping reads to one small buffer.
MAX_PIDFILE_SIZE: Final = 64

#: pid_max where the kernel does not publish one. 99999 is the largest PID
#: on FreeBSD, macOS and the other BSDs.
FALLBACK_PID_MAX: Final = 99_999

#: Reason given for an empty file, which is also what a starter that has
#: locked the file but not yet written its PID leaves for others to see.
EMPTY_REASON: Final = "is empty"

_PID_MAX_PATH: Final = "/proc/sys/kernel/pid_max"
_BLANKS: Final = b" \t"
_DIGITS: Final = frozenset(b"0123456789")


@functools.lru_cache(maxsize=1)
def pid_max() -> int:
    """Return the largest PID this system hands out.

    On Linux this is ``/proc/sys/kernel/pid_max``; elsewhere, or when that
    file is unreadable, it is `FALLBACK_PID_MAX`. The value is read once per
    process.
    """
    try:
        with open(_PID_MAX_PATH, "rb") as stream:
            value = int(stream.read(32).strip())
    except (OSError, ValueError):
        return FALLBACK_PID_MAX
    return value if value > 1 else FALLBACK_PID_MAX


class PidSyntaxError(ValueError):
    """The bytes do not follow the PID file grammar; str() is the reason."""


def _describe_byte(value: int) -> str:
    if 0x20 < value < 0x7F:
        return repr(chr(value))
    return f"byte 0x{value:02x}"


def _strip_line_end(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _find_bad_byte(body: bytes, start: int) -> str:
    """Name the first thing in `body` (blanks already stripped) that is wrong.

    `start` is the offset of `body` in the file, so that reported offsets
    count the leading blanks too.
    """
    for offset, value in enumerate(body, start):
        if value in _DIGITS:
            continue
        if value in _BLANKS:
            return "contains more than one number"
        if value in b"\r\n":
            return "contains more than one line"
        if value == 0:
            return f"contains a NUL byte at offset {offset}"
        if value in b"+-":
            sign = chr(value)
            return f"contains a sign {sign!r} at offset {offset}"
        return f"contains {_describe_byte(value)} at offset {offset}"
    raise AssertionError("no bad byte in a body that failed isdigit()")


def parse_pid(data: bytes | bytearray) -> int:
    """Parse the contents of a PID file and return the PID.

    Raises ValueError (the private subclass `PidSyntaxError`) whose message
    names the first problem: empty, too large, a byte outside the grammar,
    or a value outside 1..pid_max().
    """
    data = bytes(data)
    if not data:
        raise PidSyntaxError(EMPTY_REASON)
    if len(data) > MAX_PIDFILE_SIZE:
        raise PidSyntaxError(f"is larger than {MAX_PIDFILE_SIZE} bytes")

    line = _strip_line_end(data)
    body = line.strip(_BLANKS)
    if not body:
        raise PidSyntaxError("contains no PID")
    # bytes.isdigit() is true for ASCII digits only, unlike str.isdigit().
    if not body.isdigit():
        start = len(line) - len(line.lstrip(_BLANKS))
        raise PidSyntaxError(_find_bad_byte(body, start))

    pid = int(body)
    limit = pid_max()
    if not 1 <= pid <= limit:
        shown = body.decode("ascii")
        raise PidSyntaxError(f"PID {shown} is outside the range 1..{limit}")
    return pid
