"""Reading PID files: rejected file types, records, paths and exceptions."""

from __future__ import annotations

import errno
import os
import pickle
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pidsafe
from bounded import call_bounded
from child_process import python_child
from pidsafe import (
    AlreadyRunning,
    IdentityMismatch,
    InsecurePidfile,
    InvalidPidfile,
    NotRunning,
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfilePermissionError,
    PidfileRecord,
    PidfileSymlink,
    PidfileTooLarge,
    RuntimeDirError,
    UnsafeSymlink,
    UnsupportedPlatform,
    read_pidfile,
    read_pidfile_safely,
    status,
)

#: Python code for a child that opens the FIFO argv[1] for writing (a reader
#: must already be open), writes a PID into it, prints "ready" and keeps the
#: write end open until its stdin closes.
WRITE_FIFO = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"42\\n")
print("ready", flush=True)
sys.stdin.read()
"""


def assert_rejected(path: Path, error_type: type[PidfileError], reason: str) -> None:
    """Check that reading `path` raises `error_type` with `reason`, unblocked."""
    error = call_bounded(read_pidfile, path)

    assert type(error) is error_type
    assert error.path == str(path)
    assert error.reason == reason
    assert str(error) == f"PID file {path}: {reason}"
    assert call_bounded(read_pidfile_safely, path) is None


def write_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def pidfile(piddir: Path) -> Path:
    """A trusted PID file containing 4242."""
    return write_file(piddir / "service.pid", b"4242\n")


# File types and sizes that are rejected without reading.


def test_fifo_without_writer_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    os.mkfifo(path)

    assert_rejected(path, PidfileNotRegular, "is a FIFO, not a regular file")


def test_fifo_with_open_write_end_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    os.mkfifo(path)
    # O_RDWR on a FIFO does not wait for a peer, and keeps a writer attached.
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"42\n")

        assert_rejected(path, PidfileNotRegular, "is a FIFO, not a regular file")

        # The data is still there: pidsafe never read from the FIFO.
        assert os.read(fd, 16) == b"42\n"
    finally:
        os.close(fd)


def test_fifo_with_writer_process_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with python_child(WRITE_FIFO, str(path)) as (_, line):
            assert line == "ready"

            assert_rejected(path, PidfileNotRegular, "is a FIFO, not a regular file")

            assert os.read(reader, 16) == b"42\n"
    finally:
        os.close(reader)


def test_unix_socket_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(os.fspath(path))
        server.listen()

        assert_rejected(path, PidfileNotRegular, "is a socket, not a regular file")


def test_directory_rejected(piddir: Path) -> None:
    path = piddir / "service.pid"
    path.mkdir()

    assert_rejected(path, PidfileNotRegular, "is a directory, not a regular file")


@pytest.mark.needs_root
def test_character_device_rejected(piddir: Path) -> None:
    # A node with /dev/null's device number, in a directory of our own.
    path = piddir / "service.pid"
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))

    assert_rejected(
        path, PidfileNotRegular, "is a character device, not a regular file"
    )


def test_symlink_to_valid_pidfile_rejected(piddir: Path, pidfile: Path) -> None:
    link = piddir / "link.pid"
    link.symlink_to(pidfile)

    assert_rejected(link, PidfileSymlink, "is a symlink, which is never followed")

    assert read_pidfile(pidfile).pid == 4242


def test_dangling_symlink_rejected(piddir: Path) -> None:
    link = piddir / "service.pid"
    link.symlink_to(piddir / "missing.pid")

    assert_rejected(link, PidfileSymlink, "is a symlink, which is never followed")


def test_symlink_to_dev_zero_rejected(piddir: Path) -> None:
    link = piddir / "service.pid"
    link.symlink_to("/dev/zero")

    assert_rejected(link, PidfileSymlink, "is a symlink, which is never followed")


def test_one_mebibyte_file_too_large(piddir: Path) -> None:
    path = write_file(piddir / "service.pid", b"1" * (1 << 20))

    assert_rejected(path, PidfileTooLarge, "is larger than 64 bytes")


def test_sparse_terabyte_file_too_large(piddir: Path) -> None:
    path = write_file(piddir / "service.pid", b"42\n")
    os.truncate(path, 1 << 40)

    assert_rejected(path, PidfileTooLarge, "is larger than 64 bytes")


def test_missing_file_rejected(piddir: Path) -> None:
    assert_rejected(piddir / "service.pid", PidfileMissing, "does not exist")


def test_missing_directory_rejected(piddir: Path) -> None:
    missing = piddir / "gone"

    assert_rejected(
        missing / "service.pid",
        PidfileMissing,
        f"directory {missing} does not exist",
    )


def test_file_as_directory_rejected(pidfile: Path) -> None:
    path = pidfile / "service.pid"

    error = call_bounded(read_pidfile, path)

    assert type(error) is PidfileError
    assert error.reason == f"{pidfile} is not a directory"
    assert error.errno == errno.ENOTDIR


@pytest.mark.parametrize("suffix", ["/", "/.", "/.."])
def test_directory_path_rejected(pidfile: Path, suffix: str) -> None:
    path = f"{pidfile}{suffix}"

    with pytest.raises(PidfileNotRegular) as caught:
        read_pidfile(path)

    assert caught.value.path == path
    assert caught.value.reason == "path names a directory, not a file"
    assert read_pidfile_safely(path) is None


# Records.


def test_record_fields(pidfile: Path) -> None:
    os.utime(pidfile, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    st = os.stat(pidfile)

    record = read_pidfile(pidfile)

    assert isinstance(record, PidfileRecord)
    assert record.pid == 4242
    assert record.path == str(pidfile)
    assert record.uid == os.geteuid()
    assert record.mode == 0o644
    assert record.mtime_ns == 1_600_000_000_123_456_789
    assert record.mtime == st.st_mtime
    assert record.dev == st.st_dev
    assert record.ino == st.st_ino
    assert record.trusted is True
    assert record.reason is None


def test_record_is_frozen(pidfile: Path) -> None:
    record = read_pidfile(pidfile)

    with pytest.raises(AttributeError):
        record.pid = 1  # type: ignore[misc]  # the assignment is the test


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (0o666, "file is writable by group and others"),
        (0o664, "file is writable by group"),
        (0o646, "file is writable by others"),
    ],
)
def test_writable_file_untrusted(pidfile: Path, mode: int, reason: str) -> None:
    pidfile.chmod(mode)

    record = read_pidfile(pidfile)

    assert record.pid == 4242
    assert record.trusted is False
    assert record.reason == reason
    assert record.mode == mode
    assert read_pidfile_safely(pidfile) is None

    with pytest.raises(InsecurePidfile) as caught:
        read_pidfile(pidfile, strict=True)
    assert caught.value.reason == f"is untrusted: {reason}"


def test_hard_linked_file_untrusted(piddir: Path, pidfile: Path) -> None:
    os.link(pidfile, piddir / "other.pid")

    record = read_pidfile(pidfile)

    assert record.trusted is False
    assert record.reason == "file has 2 hard links"
    assert read_pidfile_safely(pidfile) is None


def test_writable_directory_untrusted(piddir: Path, pidfile: Path) -> None:
    piddir.chmod(0o777)

    record = read_pidfile(pidfile)

    assert record.trusted is False
    assert record.reason == f"directory {piddir} is writable by group and others"
    assert read_pidfile_safely(pidfile) is None


@pytest.mark.needs_root
def test_foreign_owned_file_untrusted(pidfile: Path) -> None:
    os.chown(pidfile, 65534, 65534)

    record = read_pidfile(pidfile)

    assert record.uid == 65534
    assert record.trusted is False
    assert record.reason == "file is owned by uid 65534"
    assert read_pidfile_safely(pidfile) is None


def test_trusted_uids_replace_defaults(pidfile: Path) -> None:
    # Without root among the trusted users, "/" itself is untrusted.
    record = read_pidfile(pidfile, trusted_uids=[12345])

    assert record.trusted is False
    if os.stat("/").st_uid == 0:
        assert record.reason == "directory / is owned by uid 0"


# Path forms.


def test_str_and_path_inputs(pidfile: Path) -> None:
    assert read_pidfile(pidfile).path == str(pidfile)
    assert read_pidfile(str(pidfile)).path == str(pidfile)
    assert read_pidfile(pidfile).pid == 4242
    assert read_pidfile(str(pidfile)).pid == 4242
    assert read_pidfile_safely(pidfile) == 4242
    assert read_pidfile_safely(str(pidfile)) == 4242


@pytest.mark.parametrize(
    "relative",
    ["service.pid", "./service.pid", "sub/../service.pid", "./sub/./../service.pid"],
)
def test_relative_paths(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path, relative: str
) -> None:
    (piddir / "sub").mkdir(mode=0o700)
    monkeypatch.chdir(piddir)

    assert read_pidfile(relative).pid == 4242
    assert read_pidfile(relative).path == relative
    assert read_pidfile(Path(relative)).pid == 4242
    assert read_pidfile_safely(relative) == 4242


def test_relative_path_in_subdirectory(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path
) -> None:
    monkeypatch.chdir(piddir.parent)

    assert read_pidfile(f"{piddir.name}/service.pid").pid == 4242


def test_relative_missing_keeps_given_path(
    monkeypatch: pytest.MonkeyPatch, piddir: Path
) -> None:
    monkeypatch.chdir(piddir)

    with pytest.raises(PidfileMissing) as caught:
        read_pidfile("missing.pid")

    assert caught.value.path == "missing.pid"
    assert caught.value.reason == "does not exist"


def test_relative_path_untrusted_cwd(
    monkeypatch: pytest.MonkeyPatch, piddir: Path, pidfile: Path
) -> None:
    # The current directory is judged like any other directory on the path.
    piddir.chmod(0o777)
    monkeypatch.chdir(piddir)

    record = read_pidfile("service.pid")

    assert record.trusted is False
    assert record.reason == f"directory {piddir} is writable by group and others"


def test_relative_path_removed_cwd(
    monkeypatch: pytest.MonkeyPatch, piddir: Path
) -> None:
    # getcwd() fails once the current directory is removed; the error must
    # still name the path and the reason.
    gone = piddir / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()

    with pytest.raises(PidfileMissing) as caught:
        read_pidfile("service.pid")

    assert caught.value.path == "service.pid"
    assert caught.value.reason == "the current directory was removed"
    assert status("service.pid").state == "absent"
    assert read_pidfile_safely("service.pid") is None


@pytest.mark.parametrize(
    "name", ["service\0.pid", "sub\0dir/service.pid"], ids=["leaf", "parent"]
)
def test_nul_byte_path_rejected(piddir: Path, name: str) -> None:
    path = f"{piddir}/{name}"

    with pytest.raises(PidfileError) as caught:
        read_pidfile(path)

    assert caught.value.path == path
    assert caught.value.reason == "path contains a NUL byte"
    assert caught.value.errno == errno.EINVAL


# The silent API.


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/run/service.pid"


@pytest.mark.parametrize(
    "path",
    [
        b"/run/service.pid",
        _BytesPath(),
        42,
        None,
        1.5,
        "/run/service\0.pid",
        "/run\0/service.pid",
        "",
        "/",
    ],
    ids=repr,
)
def test_safely_never_raises_for_bad_path(path: Any) -> None:
    assert read_pidfile_safely(path) is None


@pytest.fixture
def bad_files(piddir: Path) -> Iterator[list[Path]]:
    """Paths to every kind of file that read_pidfile_safely must reject."""
    paths = []

    def name(label: str) -> Path:
        path = piddir / f"{label}.pid"
        paths.append(path)
        return path

    target = write_file(piddir / "target", b"4242\n")
    name("symlink").symlink_to(target)
    name("dangling").symlink_to(piddir / "gone")
    os.mkfifo(name("fifo"))
    name("directory").mkdir()
    write_file(name("empty"), b"")
    write_file(name("negative"), b"-1\n")
    write_file(name("huge"), b"1" * (1 << 20))
    write_file(name("untrusted"), b"4242\n", 0o666)
    name("missing")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.fspath(name("socket")))
    try:
        yield paths
    finally:
        server.close()


def test_safely_none_for_bad_files(bad_files: list[Path]) -> None:
    for path in bad_files:
        assert call_bounded(read_pidfile_safely, path) is None, path
        assert call_bounded(read_pidfile_safely, str(path)) is None, path


# Exceptions.

DEFAULT_ERRNOS: dict[type[PidfileError], int | None] = {
    PidfileError: None,
    PidfileMissing: errno.ENOENT,
    PidfilePermissionError: errno.EACCES,
    PidfileSymlink: errno.ELOOP,
    PidfileNotRegular: errno.EINVAL,
    InvalidPidfile: errno.EINVAL,
    PidfileTooLarge: errno.EFBIG,
    InsecurePidfile: errno.EPERM,
    UnsafeSymlink: errno.EPERM,
    AlreadyRunning: errno.EAGAIN,
    IdentityMismatch: errno.ESRCH,
    NotRunning: errno.ESRCH,
    UnsupportedPlatform: errno.ENOSYS,
    RuntimeDirError: errno.EPERM,
}


def test_every_exported_error_covered() -> None:
    exported = {
        value
        for value in vars(pidsafe).values()
        if isinstance(value, type) and issubclass(value, PidfileError)
    }
    assert exported == set(DEFAULT_ERRNOS)


@pytest.mark.parametrize("error_type", list(DEFAULT_ERRNOS), ids=lambda t: t.__name__)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_error_pickles(error_type: type[PidfileError], protocol: int) -> None:
    error = error_type("/run/service.pid", "some reason")

    clone = pickle.loads(pickle.dumps(error, protocol))

    assert type(clone) is error_type
    assert isinstance(clone, OSError)
    assert clone.path == "/run/service.pid"
    assert clone.reason == "some reason"
    assert clone.errno == DEFAULT_ERRNOS[error_type]
    assert clone.filename == "/run/service.pid"
    assert str(clone) == str(error)
    assert str(clone).endswith("/run/service.pid: some reason")


def test_error_pickles_explicit_errno() -> None:
    error = PidfileError("/run/service.pid", "cannot open", errno.EIO)

    clone = pickle.loads(pickle.dumps(error))

    assert clone.errno == errno.EIO
    assert clone.reason == "cannot open"


@pytest.mark.parametrize("pid", [1234, None])
def test_already_running_pickles_pid(pid: int | None) -> None:
    error = AlreadyRunning("/run/service.pid", "is held", pid=pid)

    clone = pickle.loads(pickle.dumps(error))

    assert type(clone) is AlreadyRunning
    assert clone.pid == pid
    assert clone.path == "/run/service.pid"
    assert clone.reason == "is held"
    assert clone.errno == errno.EAGAIN


def test_raised_error_pickles(piddir: Path) -> None:
    link = piddir / "service.pid"
    link.symlink_to("/dev/zero")
    with pytest.raises(PidfileSymlink) as caught:
        read_pidfile(link)

    clone = pickle.loads(pickle.dumps(caught.value))

    assert type(clone) is PidfileSymlink
    assert clone.path == str(link)
    assert clone.reason == caught.value.reason
    assert clone.errno == errno.ELOOP


def test_missing_is_file_not_found(piddir: Path) -> None:
    assert issubclass(PidfileMissing, FileNotFoundError)
    assert issubclass(PidfilePermissionError, PermissionError)

    with pytest.raises(FileNotFoundError):
        read_pidfile(piddir / "service.pid")
