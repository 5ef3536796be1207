"""Stop schedules in start-stop-daemon's ``--retry`` grammar.

A schedule is items separated by ``/``. An item is a signal, a timeout in
seconds, or ``forever``. A signal is a name (``TERM``, ``SIGTERM`` or
``-TERM``) or a number with a leading dash (``-15``). A timeout is a whole
number of seconds (``30``) or a decimal fraction (``0.5``). ``forever``
repeats the items after it until the process exits. A schedule that is one
timeout ``N`` alone means ``SIG/N/KILL/N``, where SIG is the stop signal
(TERM unless the caller chooses another). A bare number is always a
timeout, as in start-stop-daemon, so a signal number needs its leading
``-``.
"""

from __future__ import annotations

import math
import re
import signal
from dataclasses import dataclass
from typing import Final, Union

_NUMBER: Final = re.compile(r"[0-9]+(\.[0-9]+)?")
_SIGNAL_NUMBER: Final = re.compile(r"-[0-9]+")
# Names such as TERM, SIGUSR1 or -HUP: a letter, then letters and digits.
_SIGNAL_NAME: Final = re.compile(r"-?[A-Za-z][A-Za-z0-9]*")
_DIGITS: Final = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class SendSignal:
    """A schedule step that sends `signal` after re-checking identity."""

    signal: signal.Signals


@dataclass(frozen=True)
class Wait:
    """A schedule step that waits up to `seconds` for the process to exit."""

    seconds: float


@dataclass(frozen=True)
class Forever:
    """A schedule step that repeats the steps after it until the exit."""


Step = Union[SendSignal, Wait, Forever]


def parse_signal(text: str) -> signal.Signals:
    """Return the signal named by `text`: ``TERM``, ``SIGTERM``, ``15``.

    Raises ValueError for an unknown name or number and for signal 0,
    which tests for existence and stops nothing.
    """
    bare = text[1:] if text.startswith("-") else text
    if _DIGITS.fullmatch(bare):
        if int(bare) == 0:
            raise ValueError("signal 0 stops nothing")
        try:
            found = signal.Signals(int(bare))
        except ValueError:
            raise ValueError(f"unknown signal number {bare}") from None
    else:
        name = bare.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            found = signal.Signals[name]
        except KeyError:
            raise ValueError(f"unknown signal name {text!r}") from None
    return found


def _parse_item(item: str) -> Step:
    if item == "forever":
        return Forever()
    if _NUMBER.fullmatch(item):
        seconds = float(item)
        if not math.isfinite(seconds):
            raise ValueError(f"timeout {item!r} is not a number of seconds")
        return Wait(seconds)
    if _SIGNAL_NUMBER.fullmatch(item) or _SIGNAL_NAME.fullmatch(item):
        return SendSignal(parse_signal(item))
    raise ValueError(
        f"schedule item {item!r} is not a signal, a timeout in seconds or 'forever'"
    )


def parse_schedule(
    text: str, stop_signal: signal.Signals = signal.SIGTERM
) -> tuple[Step, ...]:
    """Parse a start-stop-daemon ``--retry`` schedule into steps.

    Raises ValueError naming the problem: an empty item, an unknown signal,
    more than one ``forever``, ``forever`` with nothing after it, a repeated
    part without a timeout (it would send signals in a busy loop), or no
    signal at all.
    """
    items = text.split("/")
    if any(not item for item in items):
        raise ValueError(f"schedule {text!r} has an empty item")
    steps = tuple(_parse_item(item) for item in items)
    if len(steps) == 1 and isinstance(steps[0], Wait):
        timeout = steps[0]
        return (SendSignal(stop_signal), timeout, SendSignal(signal.SIGKILL), timeout)

    forevers = [i for i, step in enumerate(steps) if isinstance(step, Forever)]
    if len(forevers) > 1:
        raise ValueError(f"schedule {text!r} has more than one 'forever'")
    if forevers:
        repeated = steps[forevers[0] + 1 :]
        if not repeated:
            raise ValueError(f"schedule {text!r} has nothing after 'forever'")
        if not any(isinstance(step, Wait) and step.seconds > 0 for step in repeated):
            raise ValueError(
                f"schedule {text!r} repeats without waiting; add a timeout "
                "after 'forever'"
            )
    if not any(isinstance(step, SendSignal) for step in steps):
        raise ValueError(f"schedule {text!r} sends no signal")
    return steps
