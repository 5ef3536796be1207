"""The PID file grammar, through `parse_pid` and through real files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pidsafe import (
    MAX_PIDFILE_SIZE,
    InvalidPidfile,
    PidfileTooLarge,
    parse_pid,
    pid_max,
    read_pidfile,
    read_pidfile_safely,
)
from pidsafe._parse import PidSyntaxError

PID_MAX = pid_max()
ARABIC_INDIC_42 = "\u0664\u0662".encode()  # int() accepts these digits

# (contents, reason) for contents the grammar rejects.
REJECTED = [
    (b"-1", "contains a sign '-' at offset 0"),
    (b"-1\n", "contains a sign '-' at offset 0"),
    (b"0", "PID 0 is outside the range 1..{max}"),
    (b"000\n", "PID 000 is outside the range 1..{max}"),
    (b"+5", "contains a sign '+' at offset 0"),
    (b"1_000", "contains '_' at offset 1"),
    (b"12 34", "contains more than one number"),
    (b"12\t34\n", "contains more than one number"),
    (b"4\n2", "contains more than one line"),
    (b"42\n\n", "contains more than one line"),
    (b"42\r", "contains more than one line"),
    (b"7\0", "contains a NUL byte at offset 1"),
    (b"\x007", "contains a NUL byte at offset 0"),
    (b"", "is empty"),
    (b"\n", "contains no PID"),
    (b"\r\n", "contains no PID"),
    (b" \t \n", "contains no PID"),
    (b"99999999999", "PID 99999999999 is outside the range 1..{max}"),
    (str(PID_MAX + 1).encode(), f"PID {PID_MAX + 1} is outside the range 1..{{max}}"),
    (b"1" * 30, f"PID {'1' * 30} is outside the range 1..{{max}}"),
    (b"0x1F", "contains 'x' at offset 1"),
    (b"1e3", "contains 'e' at offset 1"),
    (b"4.2", "contains '.' at offset 1"),
    (ARABIC_INDIC_42, "contains byte 0xd9 at offset 0"),
    (b"4\xd9\xa2", "contains byte 0xd9 at offset 1"),
    (b"\xef\xbc\x94\xef\xbc\x92", "contains byte 0xef at offset 0"),  # fullwidth "42"
    (b"\x0b42", "contains byte 0x0b at offset 0"),
    # Offsets count from the start of the contents, leading blanks included.
    (b"  -1\n", "contains a sign '-' at offset 2"),
    (b"\t\t7\0", "contains a NUL byte at offset 3"),
]

ACCEPTED = [
    (b"42\n", 42),
    (b"42", 42),
    (b" 42 \n", 42),
    (b"42\r\n", 42),
    (b"0042\n", 42),
    (b"\t42\t\n", 42),
    (b" \t 42\t \r\n", 42),
    (b"1\n", 1),
    (str(PID_MAX).encode() + b"\n", PID_MAX),
    # Exactly the size cap, padded with leading zeros.
    (b"0" * (MAX_PIDFILE_SIZE - 3) + b"42\n", 42),
]

REJECTED_IDS = [repr(data) for data, _ in REJECTED]
ACCEPTED_IDS = [repr(data) for data, _ in ACCEPTED]


def _with_pid_max(template: str) -> str:
    return template.replace("{max}", str(PID_MAX))


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def test_size_cap_is_64_bytes() -> None:
    assert MAX_PIDFILE_SIZE == 64


@pytest.mark.parametrize(("data", "reason"), REJECTED, ids=REJECTED_IDS)
def test_parse_pid_rejects(data: bytes, reason: str) -> None:
    with pytest.raises(PidSyntaxError) as caught:
        parse_pid(data)
    assert str(caught.value) == _with_pid_max(reason)


@pytest.mark.parametrize(("data", "reason"), REJECTED, ids=REJECTED_IDS)
def test_read_pidfile_rejects(piddir: Path, data: bytes, reason: str) -> None:
    path = _write(piddir / "service.pid", data)

    with pytest.raises(InvalidPidfile) as caught:
        read_pidfile(path)

    assert type(caught.value) is InvalidPidfile
    assert caught.value.path == str(path)
    assert caught.value.reason == _with_pid_max(reason)
    assert str(path) in str(caught.value)
    assert read_pidfile_safely(path) is None


@pytest.mark.parametrize(("data", "pid"), ACCEPTED, ids=ACCEPTED_IDS)
def test_parse_pid_accepts(data: bytes, pid: int) -> None:
    assert parse_pid(data) == pid
    assert parse_pid(bytearray(data)) == pid


@pytest.mark.parametrize(("data", "pid"), ACCEPTED, ids=ACCEPTED_IDS)
def test_read_pidfile_accepts(piddir: Path, data: bytes, pid: int) -> None:
    path = _write(piddir / "service.pid", data)

    assert read_pidfile(path).pid == pid
    assert read_pidfile_safely(path) == pid


def test_parse_pid_rejects_over_size_cap() -> None:
    with pytest.raises(PidSyntaxError) as caught:
        parse_pid(b"0" * (MAX_PIDFILE_SIZE - 2) + b"42\n")
    assert str(caught.value) == "is larger than 64 bytes"


def test_digit_run_over_cap_too_large(piddir: Path) -> None:
    # 65 digits: a parser that truncated to the cap would see a number.
    path = _write(piddir / "service.pid", b"1" * (MAX_PIDFILE_SIZE + 1))

    with pytest.raises(PidfileTooLarge) as caught:
        read_pidfile(path)

    assert caught.value.reason == "is larger than 64 bytes"
    assert caught.value.path == str(path)
    assert read_pidfile_safely(path) is None


def test_leading_zeros_over_cap_too_large(piddir: Path) -> None:
    path = _write(piddir / "service.pid", b"0" * MAX_PIDFILE_SIZE + b"42\n")

    with pytest.raises(PidfileTooLarge) as caught:
        read_pidfile(path)

    assert caught.value.reason == "is larger than 64 bytes"


def test_pid_max_matches_kernel() -> None:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as stream:
            expected = int(stream.read())
    except FileNotFoundError:
        pytest.skip("no /proc/sys/kernel/pid_max; the fallback is used")
    assert pid_max() == expected


# An independent statement of the grammar. fullmatch, because "$" in a
# Python regex also matches before a final "\n" and would accept "42\n\n".
GRAMMAR = re.compile(rb"[ \t]*([0-9]+)[ \t]*(\r?\n)?")


def reference_pid(data: bytes) -> int | None:
    """Return the PID that the grammar gives for `data`, or None."""
    if len(data) > 64:
        return None
    match = GRAMMAR.fullmatch(data)
    if match is None:
        return None
    pid = int(match.group(1))
    return pid if 1 <= pid <= PID_MAX else None


def _insert(parts: tuple[bytes, int, bytes]) -> bytes:
    base, offset, extra = parts
    return base[:offset] + extra + base[offset:]


# Mostly valid-looking contents, so that both outcomes are well exercised.
_NEAR_VALID = st.from_regex(rb"\A[ \t]{0,4}[0-9]{1,12}[ \t]{0,4}(\r?\n)?\Z")
_LONG_VALID = st.from_regex(rb"\A[ \t]{0,30}0{0,40}[0-9]{1,6}[ \t]{0,3}\n?\Z")

# Short sequences of the bytes the grammar treats specially, so that corner
# cases such as a bare "\r", "\n\n" or a blank after the newline come up
# often.
_TOKENS = st.lists(
    st.sampled_from(
        [
            *(b" ", b"\t", b"0", b"1", b"7", b"\r", b"\n", b"\r\n"),
            *(b"-", b"+", b"_", b"\0", b"\x0b", b"\x0c", b"x", ARABIC_INDIC_42),
        ]
    ),
    max_size=10,
).map(b"".join)

# A number between a chosen prefix and a chosen ending, valid or not.
_FRAMED = st.builds(
    lambda prefix, number, ending: prefix + number + ending,
    st.sampled_from([b"", b" ", b"\t", b" \t ", b"-", b"+", b"\0", b"\n"]),
    st.integers(0, PID_MAX + 1).map(lambda n: b"%d" % n),
    st.sampled_from(
        [
            *(b"", b"\n", b"\r\n", b" \n", b"\t\r\n", b"\r", b"\n\n", b"\r\r\n"),
            *(b"\n\r", b"\n ", b"\0", b"\n\0", b" 1", b"\x0b"),
        ]
    ),
)

CONTENTS = st.one_of(
    st.binary(max_size=80),
    _TOKENS,
    _FRAMED,
    _NEAR_VALID,
    _LONG_VALID,
    st.tuples(_NEAR_VALID, st.integers(0, 20), st.binary(min_size=1, max_size=3)).map(
        _insert
    ),
    st.integers(-5, PID_MAX + 5).map(lambda n: b"%d\n" % n),
)


# The one file is rewritten for every example, so sharing the fixture's
# directory between examples is safe.
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=CONTENTS)
def test_grammar_matches_reference(piddir: Path, data: bytes) -> None:
    expected = reference_pid(data)
    path = _write(piddir / "service.pid", data)

    assert read_pidfile_safely(path) == expected
    if expected is None:
        with pytest.raises(PidSyntaxError):
            parse_pid(data)
    else:
        assert parse_pid(data) == expected


# parse_pid needs no file, so it can afford many more examples of the
# contents that sit close to the grammar's edges.
@settings(max_examples=1500, deadline=None)
@given(data=st.one_of(_FRAMED, _TOKENS))
def test_parse_pid_matches_reference(data: bytes) -> None:
    expected = reference_pid(data)

    if expected is None:
        with pytest.raises(PidSyntaxError):
            parse_pid(data)
    else:
        assert parse_pid(data) == expected
