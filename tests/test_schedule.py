"""parse_schedule and parse_signal: start-stop-daemon's --retry grammar."""

from __future__ import annotations

import signal

import pytest

from pidsafe._schedule import (
    Forever,
    SendSignal,
    Wait,
    parse_schedule,
    parse_signal,
)

TERM = SendSignal(signal.SIGTERM)
KILL = SendSignal(signal.SIGKILL)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("-TERM", signal.SIGTERM),
        ("term", signal.SIGTERM),
        ("15", signal.SIGTERM),
        ("-9", signal.SIGKILL),
        ("HUP", signal.SIGHUP),
        ("USR1", signal.SIGUSR1),
    ],
)
def test_signal_accepted(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "stops nothing"),
        ("-0", "stops nothing"),
        ("NOPE", "unknown signal name"),
        ("999", "unknown signal number"),
        ("\uff11\uff15", "unknown signal name"),  # full-width digits
    ],
)
def test_signal_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_signal(text)


def test_default_schedule() -> None:
    assert parse_schedule("TERM/30/KILL/5") == (TERM, Wait(30), KILL, Wait(5))


def test_bare_timeout_expands() -> None:
    assert parse_schedule("10") == (TERM, Wait(10), KILL, Wait(10))


def test_bare_timeout_uses_stop_signal() -> None:
    expected = (SendSignal(signal.SIGINT), Wait(3), KILL, Wait(3))
    assert parse_schedule("3", signal.SIGINT) == expected


def test_signal_numbers_need_dash() -> None:
    assert parse_schedule("-15/2/-9/1") == (TERM, Wait(2), KILL, Wait(1))


def test_fractional_timeout() -> None:
    assert parse_schedule("TERM/0.5") == (TERM, Wait(0.5))


def test_forever_repeats_rest() -> None:
    steps = parse_schedule("TERM/5/forever/KILL/1")
    assert steps == (TERM, Wait(5), Forever(), KILL, Wait(1))


def test_signal_names_with_digits() -> None:
    expected = (SendSignal(signal.SIGUSR1), Wait(1), SendSignal(signal.SIGUSR2))
    assert parse_schedule("USR1/1/SIGUSR2") == expected


def test_schedule_without_kill_is_allowed() -> None:
    assert parse_schedule("TERM/1") == (TERM, Wait(1))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty item"),
        ("TERM//5", "empty item"),
        ("TERM/5/", "empty item"),
        ("30/60", "sends no signal"),
        ("forever/TERM/1/forever/KILL/1", "more than one"),
        ("TERM/1/forever", "nothing after"),
        ("TERM/forever/KILL", "repeats without waiting"),
        ("TERM/forever/KILL/0", "repeats without waiting"),
        ("TERM/1e3", "not a signal"),
        ("TERM/-1.5", "not a signal"),
        ("TERM/1abc", "not a signal"),
        ("TERM/abc1", "unknown signal name"),
        ("NOPE/5", "unknown signal name"),
    ],
)
def test_schedule_rejected(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)
