"""Attacks on PID file paths, with the attacker's steps run as another user.

The test process is root and plays the victim that calls pidsafe. Each
attacker step runs as a throwaway unprivileged user in a child process
(see ``_users.py``). Everything lives in a fresh directory under the system
temp directory: ``base`` is owned by root with mode 0755, and
``base/shared``, a sticky directory with mode 1777, plays the part of
/tmp. A decoy PID file, owned by root in a directory only root may write,
is what the attacker tries to make the victim read or remove.
"""

from __future__ import annotations

import collections
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest

import pidsafe
import pidsafe._path
import pidsafe._read
import pidsafe._status
from _users import (
    SOURCE_DIR,
    STEP_TIMEOUT,
    User,
    finish,
    run_as,
    started_as,
    unprivileged_users,
    wait_for_line,
)

pytestmark = [pytest.mark.needs_users, pytest.mark.attack]

REAL_PID = 1234
DECOY_PID = 4321
LEXICAL_PID = 2345

#: Seconds the attacker flips names in a race test.
RACE_SECONDS = 3.0
#: Wall-clock bound on a whole race test, from the attacker's start.
RACE_LIMIT = 10.0
#: Flips below this mean the attacker barely ran and the race proved little.
MIN_FLIPS = 100
#: Seconds a paused victim thread or the test waits on the other.
SEAM_TIMEOUT = 10.0


class Sandbox(NamedTuple):
    base: Path
    shared: Path
    attacker: User
    other: User


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[User, ...]]:
    with unprivileged_users(2) as created:
        yield created


def _require_searchable(path: Path) -> None:
    for directory in [path, *path.parents]:
        if not directory.stat().st_mode & stat.S_IXOTH:
            pytest.fail(
                f"{directory} is not searchable by other users, so the attack "
                f"tests cannot use {path}; set TMPDIR to a directory they can reach"
            )


@pytest.fixture
def sandbox(users: tuple[User, ...]) -> Iterator[Sandbox]:
    base = Path(os.path.realpath(tempfile.mkdtemp(prefix="pidsafe-attacks-")))
    try:
        base.chmod(0o755)
        _require_searchable(base)
        shared = make_dir(base / "shared", 0o1777)
        yield Sandbox(base, shared, users[0], users[1])
    finally:
        shutil.rmtree(base)


@pytest.fixture
def dead_pid() -> int:
    """A PID whose process has exited and been reaped."""
    child = subprocess.Popen(["true"])
    child.wait(timeout=STEP_TIMEOUT)
    return child.pid


def make_dir(path: Path, mode: int = 0o755) -> Path:
    """Create a directory owned by root; chmod because mkdir applies umask."""
    path.mkdir()
    path.chmod(mode)
    return path


def write_pid(path: Path, pid: int, mode: int = 0o644) -> Path:
    path.write_text(f"{pid}\n")
    path.chmod(mode)
    return path


def make_decoy(sandbox: Sandbox) -> Path:
    """Create base/decoy/app.pid, owned by root, containing DECOY_PID."""
    return write_pid(make_dir(sandbox.base / "decoy") / "app.pid", DECOY_PID)


def identity(path: Path) -> tuple[int, int, str]:
    """Return what must not change about a file: device, inode, contents."""
    st = os.stat(path, follow_symlinks=False)
    return st.st_dev, st.st_ino, path.read_text()


def attacker_dir(sandbox: Sandbox, name: str = "atk") -> Path:
    """Let the attacker create a directory of its own, mode 0755, in shared."""
    path = sandbox.shared / name
    run_as(sandbox.attacker, ["mkdir", str(path), "0755"])
    return path


# Trusted and untrusted locations.


def test_private_dir_file_trusted(sandbox: Sandbox) -> None:
    # The other tests rely on base's own ancestry being secure.
    path = write_pid(make_dir(sandbox.base / "run") / "app.pid", REAL_PID)

    record = pidsafe.read_pidfile(path)

    assert record.pid == REAL_PID
    assert record.trusted is True
    assert record.reason is None
    assert pidsafe.read_pidfile_safely(path) == REAL_PID


def test_symlink_parent_in_sticky_dir_rejected(sandbox: Sandbox) -> None:
    decoy = make_decoy(sandbox)
    decoy_before = identity(decoy)
    link = sandbox.shared / "app"
    path = link / "app.pid"
    uid = sandbox.attacker.uid

    # The attacker's own directory is read, but not trusted.
    run_as(
        sandbox.attacker,
        ["mkdir", str(link), "0755"],
        ["write", str(path), f"{REAL_PID}\n", "0644"],
    )
    assert pidsafe.read_pidfile(path).trusted is False

    # Then it swaps the directory for a symlink to the decoy's directory.
    run_as(
        sandbox.attacker,
        ["rename", str(link), str(sandbox.shared / "old")],
        ["symlink", str(decoy.parent), str(link)],
    )
    with pytest.raises(pidsafe.UnsafeSymlink) as caught:
        pidsafe.read_pidfile(path)

    error = caught.value
    assert error.path == str(path)
    assert str(path) in str(error)
    assert f"{link} is a symlink owned by uid {uid}" in error.reason
    assert f"in the shared directory {sandbox.shared}" in error.reason
    assert "so it is not followed" in error.reason

    assert pidsafe.read_pidfile_safely(path) is None
    with pytest.raises(pidsafe.UnsafeSymlink):
        pidsafe.read_pidfile(path, strict=True)
    with pytest.raises(pidsafe.UnsafeSymlink):
        pidsafe.remove_pidfile(path)
    pidsafe.unlink_pidfile_safely(path)
    with pytest.raises(pidsafe.UnsafeSymlink):
        pidsafe.clean_pidfile(path)
    assert pidsafe.status(path).state == "refused"
    assert identity(decoy) == decoy_before


def test_root_symlinks_in_secure_dir_followed(sandbox: Sandbox) -> None:
    run = make_dir(sandbox.base / "run")
    write_pid(run / "app.pid", REAL_PID)
    var = make_dir(sandbox.base / "var")
    (var / "run").symlink_to("../run")
    (var / "run-absolute").symlink_to(run)

    for link in ("run", "run-absolute"):
        record = pidsafe.read_pidfile(var / link / "app.pid")

        assert record.pid == REAL_PID
        assert record.trusted is True, record.reason
        assert record.reason is None
        assert pidsafe.read_pidfile_safely(var / link / "app.pid") == REAL_PID


def test_root_symlink_to_attacker_dir_untrusted(sandbox: Sandbox) -> None:
    # Following a trusted symlink does not make its target trusted.
    target = attacker_dir(sandbox)
    run_as(
        sandbox.attacker,
        ["write", str(target / "app.pid"), f"{REAL_PID}\n", "0644"],
    )
    var = make_dir(sandbox.base / "var")
    (var / "run").symlink_to(target)

    record = pidsafe.read_pidfile(var / "run" / "app.pid")

    assert record.pid == REAL_PID
    assert record.trusted is False
    assert record.reason == (
        f"directory {target} is owned by uid {sandbox.attacker.uid}"
    )


def test_sticky_dir_own_file_trusted(sandbox: Sandbox) -> None:
    path = write_pid(sandbox.shared / "app.pid", REAL_PID)

    record = pidsafe.read_pidfile(path)

    assert record.trusted is True, record.reason
    assert record.reason is None
    assert pidsafe.read_pidfile_safely(path) == REAL_PID


# Each case builds an untrusted PID file containing `pid` and returns its path
# and the reason pidsafe must give.
UntrustedCase = Callable[[Sandbox, int], "tuple[Path, str]"]


def sticky_dir_foreign_file(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    path = sandbox.shared / "app.pid"
    run_as(sandbox.attacker, ["write", str(path), f"{pid}\n", "0644"])
    reason = (
        f"{path} is owned by uid {sandbox.attacker.uid} "
        f"in the shared directory {sandbox.shared}"
    )
    return path, reason


def world_writable_dir(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    directory = make_dir(sandbox.base / "open", 0o777)
    path = write_pid(directory / "app.pid", pid)
    return path, f"directory {directory} is writable by group and others"


def group_writable_dir(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    directory = make_dir(sandbox.base / "team", 0o775)
    path = write_pid(directory / "app.pid", pid)
    return path, f"directory {directory} is writable by group"


def attacker_owned_dir(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    directory = attacker_dir(sandbox)
    path = directory / "app.pid"
    run_as(sandbox.attacker, ["write", str(path), f"{pid}\n", "0644"])
    return path, f"directory {directory} is owned by uid {sandbox.attacker.uid}"


def world_writable_file(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    path = write_pid(make_dir(sandbox.base / "run") / "app.pid", pid, 0o666)
    return path, "file is writable by group and others"


def foreign_file_in_private_dir(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    path = write_pid(make_dir(sandbox.base / "run") / "app.pid", pid)
    os.chown(path, sandbox.other.uid, sandbox.other.gid)
    return path, f"file is owned by uid {sandbox.other.uid}"


def hard_linked_file(sandbox: Sandbox, pid: int) -> tuple[Path, str]:
    directory = make_dir(sandbox.base / "run")
    path = write_pid(directory / "app.pid", pid)
    os.link(path, directory / "second-name")
    return path, "file has 2 hard links"


UNTRUSTED_CASES: list[UntrustedCase] = [
    sticky_dir_foreign_file,
    world_writable_dir,
    group_writable_dir,
    attacker_owned_dir,
    world_writable_file,
    foreign_file_in_private_dir,
    hard_linked_file,
]


@pytest.mark.parametrize("case", UNTRUSTED_CASES, ids=lambda case: case.__name__)
def test_untrusted_file_read(sandbox: Sandbox, case: UntrustedCase) -> None:
    path, reason = case(sandbox, REAL_PID)

    record = pidsafe.read_pidfile(path)

    assert record.pid == REAL_PID
    assert record.trusted is False
    assert record.reason == reason


@pytest.mark.parametrize("case", UNTRUSTED_CASES, ids=lambda case: case.__name__)
def test_untrusted_file_strict_raises(sandbox: Sandbox, case: UntrustedCase) -> None:
    path, reason = case(sandbox, REAL_PID)

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.read_pidfile(path, strict=True)

    assert type(caught.value) is pidsafe.InsecurePidfile
    assert caught.value.path == str(path)
    assert str(caught.value) == f"PID file {path}: is untrusted: {reason}"
    assert pidsafe.read_pidfile_safely(path) is None


@pytest.mark.parametrize("case", UNTRUSTED_CASES, ids=lambda case: case.__name__)
def test_clean_keeps_untrusted_file(
    sandbox: Sandbox, case: UntrustedCase, dead_pid: int
) -> None:
    path, reason = case(sandbox, dead_pid)
    before = identity(path)

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.clean_pidfile(path)

    assert caught.value.path == str(path)
    assert caught.value.reason == f"refusing to clean it: {reason}"
    assert identity(path) == before


def test_clean_removes_trusted_stale_file(sandbox: Sandbox, dead_pid: int) -> None:
    # The counterpart of the test above: the same stale file, trusted.
    path = write_pid(make_dir(sandbox.base / "run") / "app.pid", dead_pid)

    result = pidsafe.clean_pidfile(path)

    assert result.state == "stale"
    assert not path.exists()


# Paths with "..": resolution is physical, as the kernel's.


def test_dotdot_after_symlink_is_physical(sandbox: Sandbox) -> None:
    elsewhere = make_dir(sandbox.base / "elsewhere")
    make_dir(elsewhere / "sub")
    write_pid(elsewhere / "app.pid", REAL_PID)
    directory = make_dir(sandbox.base / "dir")
    write_pid(directory / "app.pid", LEXICAL_PID)
    (directory / "link").symlink_to(elsewhere / "sub")
    (directory / "relative").symlink_to("../elsewhere/sub")

    for link in ("link", "relative"):
        path = directory / link / ".." / "app.pid"
        record = pidsafe.read_pidfile(path)

        assert record.pid == REAL_PID
        assert record.trusted is True, record.reason
        assert record.path == str(path)


def test_dotdot_through_attacker_symlink_rejected(sandbox: Sandbox) -> None:
    elsewhere = make_dir(sandbox.base / "elsewhere")
    make_dir(elsewhere / "sub")
    write_pid(elsewhere / "app.pid", REAL_PID)
    write_pid(sandbox.shared / "app.pid", LEXICAL_PID)
    own_dir = attacker_dir(sandbox)
    in_shared = sandbox.shared / "link"
    in_own_dir = own_dir / "link"
    run_as(
        sandbox.attacker,
        ["symlink", str(elsewhere / "sub"), str(in_shared)],
        ["symlink", str(elsewhere / "sub"), str(in_own_dir)],
    )
    uid = sandbox.attacker.uid
    expected = {
        in_shared: f"{in_shared} is a symlink owned by uid {uid} in the shared",
        in_own_dir: f"directory {own_dir} is owned by uid {uid}",
    }

    for link, reason_part in expected.items():
        path = link / ".." / "app.pid"
        with pytest.raises(pidsafe.UnsafeSymlink) as caught:
            pidsafe.read_pidfile(path)

        assert caught.value.path == str(path)
        assert f"{link} is a symlink owned by uid {uid}" in caught.value.reason
        assert reason_part in caught.value.reason
        assert pidsafe.read_pidfile_safely(path) is None


# A victim that is not root.


def test_unsearchable_dir_permission_error(sandbox: Sandbox) -> None:
    # Root may search any directory, so the victim here is another user.
    locked = make_dir(sandbox.base / "locked", 0o700)
    write_pid(locked / "app.pid", REAL_PID)
    make_dir(locked / "sub")
    write_pid(locked / "sub" / "app.pid", REAL_PID)
    leaf_path = locked / "app.pid"
    nested_path = locked / "sub" / "app.pid"

    results = run_as(
        sandbox.other,
        ["pidsafe", SOURCE_DIR, "read_pidfile", str(leaf_path)],
        ["pidsafe", SOURCE_DIR, "read_pidfile", str(nested_path)],
        ["pidsafe", SOURCE_DIR, "remove_pidfile", str(leaf_path)],
    )

    for path, result in zip((leaf_path, nested_path, leaf_path), results):
        assert result["error"] == "PidfilePermissionError", result
        assert result["message"] == (
            f"PID file {path}: permission denied searching directory {locked}"
        )
    assert leaf_path.exists()


def test_unreadable_file_permission_error(sandbox: Sandbox) -> None:
    directory = make_dir(sandbox.base / "run")
    path = write_pid(directory / "app.pid", REAL_PID, 0o600)

    results = run_as(
        sandbox.other,
        ["pidsafe", SOURCE_DIR, "read_pidfile", str(path)],
        ["pidsafe", SOURCE_DIR, "remove_pidfile", str(path)],
    )

    assert results[0]["error"] == "PidfilePermissionError", results[0]
    assert results[0]["message"] == f"PID file {path}: permission denied opening it"
    assert results[1]["error"] == "PidfilePermissionError", results[1]
    assert results[1]["message"] == (
        f"PID file {path}: permission denied removing it from directory {directory}"
    )
    assert path.exists()


# Removal in untrusted locations.


def test_attacker_dir_foreign_file_kept(sandbox: Sandbox) -> None:
    path, reason = attacker_owned_dir(sandbox, REAL_PID)
    before = identity(path)

    pidsafe.unlink_pidfile_safely(path)
    assert identity(path) == before

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.remove_pidfile(path)
    assert caught.value.path == str(path)
    assert caught.value.reason == f"refusing to remove it: {reason}"
    assert identity(path) == before


def test_attacker_dir_own_file_removed(sandbox: Sandbox) -> None:
    # The caller's own file is its to remove, wherever it is.
    path = write_pid(attacker_dir(sandbox) / "app.pid", REAL_PID)

    pidsafe.unlink_pidfile_safely(path)

    assert not path.exists()


def test_world_writable_dir_foreign_file_kept(sandbox: Sandbox) -> None:
    directory = make_dir(sandbox.base / "open", 0o777)
    path = directory / "app.pid"
    run_as(sandbox.attacker, ["write", str(path), f"{REAL_PID}\n", "0644"])
    before = identity(path)

    pidsafe.unlink_pidfile_safely(path)
    assert identity(path) == before

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.remove_pidfile(path)
    assert caught.value.path == str(path)
    assert caught.value.reason == (
        f"refusing to remove it: directory {directory} is writable by group and others"
    )
    assert identity(path) == before


def test_sticky_dir_foreign_file_kept(sandbox: Sandbox, dead_pid: int) -> None:
    path, reason = sticky_dir_foreign_file(sandbox, dead_pid)
    before = identity(path)

    pidsafe.unlink_pidfile_safely(path)
    assert identity(path) == before

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        pidsafe.remove_pidfile(path)
    assert caught.value.path == str(path)
    assert caught.value.reason == f"refusing to remove it: {reason}"

    with (
        pidsafe.PidDirectory(sandbox.shared) as directory,
        pytest.raises(pidsafe.InsecurePidfile),
    ):
        directory.remove(path.name)
    with pytest.raises(pidsafe.InsecurePidfile):
        pidsafe.clean_pidfile(path)
    assert identity(path) == before


# Trust granted by the caller.


def test_trusted_uids_grant_trust(sandbox: Sandbox) -> None:
    path, reason = attacker_owned_dir(sandbox, REAL_PID)
    trusted = {0, os.geteuid(), sandbox.attacker.uid}

    assert pidsafe.read_pidfile(path).reason == reason
    record = pidsafe.read_pidfile(path, strict=True, trusted_uids=trusted)

    assert record.pid == REAL_PID
    assert record.trusted is True
    assert record.reason is None


def test_piddirectory_sees_attacker_chmod(sandbox: Sandbox) -> None:
    path, _ = attacker_owned_dir(sandbox, REAL_PID)
    directory = path.parent
    trusted = {0, os.geteuid(), sandbox.attacker.uid}
    before = identity(path)

    with pidsafe.PidDirectory(directory, trusted_uids=trusted) as handle:
        assert handle.read(path.name).trusted is True

        run_as(sandbox.attacker, ["chmod", str(directory), "0777"])
        record = handle.read(path.name)

        assert record.trusted is False
        assert record.reason == (
            f"directory {directory} is writable by group and others"
        )
        with pytest.raises(pidsafe.InsecurePidfile):
            handle.read(path.name, strict=True)
        assert handle.read_safely(path.name) is None
        with pytest.raises(pidsafe.InsecurePidfile):
            handle.remove(path.name)
    assert identity(path) == before


def test_piddirectory_sees_root_chmod(sandbox: Sandbox) -> None:
    directory = make_dir(sandbox.base / "run")
    path = write_pid(directory / "app.pid", REAL_PID)

    with pidsafe.PidDirectory(directory) as handle:
        assert handle.read_safely(path.name) == REAL_PID

        directory.chmod(0o777)
        record = handle.read(path.name)

        assert record.trusted is False
        assert record.reason == (
            f"directory {directory} is writable by group and others"
        )
        assert handle.read_safely(path.name) is None


# Races: the attacker flips names while the victim reads and removes.


class RaceSite(NamedTuple):
    path: Path  # the name the victim uses
    first: Path  # the two names the attacker swaps
    second: Path
    decoy: Path
    real_dir_fd: int  # where the victim recreates its own file


def run_race(
    sandbox: Sandbox, site: RaceSite, symlink_target: str | None
) -> tuple[int, collections.Counter[str]]:
    """Race the victim against the attacker's flips; return both tallies.

    Checks after every round that the victim neither returned the decoy's
    PID nor removed the decoy. The whole race, including the attacker's
    start, stays within RACE_LIMIT seconds.
    """
    decoy_before = identity(site.decoy)
    outcomes: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    flip = ["flip", str(site.first), str(site.second), RACE_SECONDS, symlink_target]

    with started_as(sandbox.attacker, flip) as flipper:
        wait_for_line(flipper, "ready", timeout=RACE_LIMIT / 2)
        # Leave a second for collecting the attacker's result.
        deadline = start + RACE_LIMIT - 1
        while flipper.poll() is None and time.monotonic() < deadline:
            outcomes[victim_round(site.path)] += 1
            assert identity(site.decoy) == decoy_before, outcomes
            recreate_pidfile(site.real_dir_fd, site.path.name)
        remaining = start + RACE_LIMIT - time.monotonic()
        [flips] = finish(flipper, sandbox.attacker, timeout=max(remaining, 0.1))

    assert identity(site.decoy) == decoy_before
    return flips, outcomes


def victim_round(path: Path) -> str:
    """Read, query, remove and clean `path` once; return what the read saw."""
    try:
        record = pidsafe.read_pidfile(path)
    except pidsafe.PidfileError as exc:
        outcome = type(exc).__name__
    else:
        assert record.pid == REAL_PID
        assert record.trusted is False
        outcome = "read"

    assert pidsafe.read_pidfile_safely(path) is None
    assert pidsafe.status(path).pid in (None, REAL_PID)
    try:
        pidsafe.remove_pidfile(path)
    except pidsafe.PidfileError:
        pass
    try:
        pidsafe.clean_pidfile(path)
    except pidsafe.PidfileError:
        pass
    return outcome


def recreate_pidfile(dir_fd: int, name: str) -> None:
    """Write the victim's own file again through its directory's fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        return
    try:
        os.write(fd, f"{REAL_PID}\n".encode())
    finally:
        os.close(fd)


@pytest.mark.timeout(RACE_LIMIT + 10)
def test_race_parent_dir_flips(sandbox: Sandbox) -> None:
    decoy = make_decoy(sandbox)
    own_dir = attacker_dir(sandbox)
    real_dir = own_dir / "app"
    link = own_dir / "link"
    run_as(
        sandbox.attacker,
        ["mkdir", str(real_dir), "0755"],
        ["symlink", str(decoy.parent), str(link)],
    )
    dir_fd = os.open(real_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        recreate_pidfile(dir_fd, "app.pid")
        site = RaceSite(real_dir / "app.pid", real_dir, link, decoy, dir_fd)
        flips, outcomes = run_race(sandbox, site, None)
    finally:
        os.close(dir_fd)

    assert flips >= MIN_FLIPS, (flips, outcomes)
    assert outcomes["read"] > 0, outcomes
    assert outcomes["UnsafeSymlink"] > 0, outcomes


@pytest.mark.timeout(RACE_LIMIT + 10)
def test_race_file_flips(sandbox: Sandbox) -> None:
    decoy = make_decoy(sandbox)
    own_dir = attacker_dir(sandbox)
    path = own_dir / "app.pid"
    link = own_dir / "link"
    run_as(sandbox.attacker, ["symlink", str(decoy), str(link)])
    dir_fd = os.open(own_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        recreate_pidfile(dir_fd, path.name)
        site = RaceSite(path, path, link, decoy, dir_fd)
        flips, outcomes = run_race(sandbox, site, str(decoy))
    finally:
        os.close(dir_fd)

    assert flips >= MIN_FLIPS, (flips, outcomes)
    assert outcomes["read"] > 0, outcomes
    assert outcomes["PidfileSymlink"] > 0, outcomes


# Deterministic races: the victim pauses at one step while the attacker acts.


class Pause:
    """A seam that stops the victim thread at one call until released."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()

    def after(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """Return `function` that waits for the release after it returns."""

        def paused(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            self.wait()
            return result

        return paused

    def before(
        self, function: Callable[..., Any], matches: Callable[..., bool]
    ) -> Callable[..., Any]:
        """Return `function` that waits first when `matches` accepts the call.

        Only the first matching call waits.
        """

        def paused(*args: Any, **kwargs: Any) -> Any:
            if not self.reached.is_set() and matches(*args, **kwargs):
                self.wait()
            return function(*args, **kwargs)

        return paused

    def wait(self) -> None:
        self.reached.set()
        if not self.release.wait(SEAM_TIMEOUT):
            raise TimeoutError("the test never released the paused victim")


class OsWithSeam:
    """Stand-in for the os module inside one pidsafe module."""

    def __init__(self, **replacements: Callable[..., Any]) -> None:
        self.replacements = replacements

    def __getattr__(self, name: str) -> Any:
        if name in self.replacements:
            return self.replacements[name]
        return getattr(os, name)


def run_paused(
    call: Callable[[], Any], pause: Pause, attack: Callable[[], None]
) -> Any:
    """Run `call` in a thread, run `attack` while it is paused, return its result.

    Re-raises whatever `call` raised, so `pytest.raises` works around it.
    """
    outcome: dict[str, Any] = {}

    def victim() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=victim, daemon=True)
    thread.start()
    try:
        assert pause.reached.wait(SEAM_TIMEOUT), "the victim never reached the seam"
        attack()
    finally:
        pause.release.set()
        thread.join(SEAM_TIMEOUT)
    assert not thread.is_alive(), "the victim did not finish after the release"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


class SwapSite(NamedTuple):
    path: Path  # the name the victim uses
    original: Path  # the victim's file, after the swap
    decoy: Path
    swap: list[Any]  # the attacker's step
    reason: str  # why the victim's file is untrusted


def parent_swap_site(sandbox: Sandbox) -> SwapSite:
    """Build an attacker directory whose "app" becomes a symlink on `swap`."""
    decoy = make_decoy(sandbox)
    own_dir = attacker_dir(sandbox)
    real_dir = own_dir / "app"
    link = own_dir / "link"
    run_as(
        sandbox.attacker,
        ["mkdir", str(real_dir), "0755"],
        ["symlink", str(decoy.parent), str(link)],
    )
    write_pid(real_dir / "app.pid", REAL_PID)
    swap = ["exchange", str(real_dir), str(link)]
    reason = f"directory {own_dir} is owned by uid {sandbox.attacker.uid}"
    return SwapSite(real_dir / "app.pid", link / "app.pid", decoy, swap, reason)


def paused_after_parent(
    monkeypatch: pytest.MonkeyPatch, module: Any, sandbox: Sandbox, site: SwapSite
) -> tuple[Pause, Callable[[], None]]:
    pause = Pause()
    monkeypatch.setattr(module, "open_parent", pause.after(module.open_parent))

    def attack() -> None:
        run_as(sandbox.attacker, site.swap)
        # The kernel now resolves the victim's path to the decoy.
        assert site.path.read_text() == site.decoy.read_text()

    return pause, attack


def test_parent_swap_before_read(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = parent_swap_site(sandbox)
    decoy_before = identity(site.decoy)
    pause, attack = paused_after_parent(monkeypatch, pidsafe._read, sandbox, site)

    record = run_paused(lambda: pidsafe.read_pidfile(site.path), pause, attack)

    assert record.pid == REAL_PID
    assert record.reason == site.reason
    assert identity(site.decoy) == decoy_before


def test_parent_swap_before_strict_read(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = parent_swap_site(sandbox)
    pause, attack = paused_after_parent(monkeypatch, pidsafe._read, sandbox, site)

    def read() -> Any:
        return pidsafe.read_pidfile(site.path, strict=True)

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        run_paused(read, pause, attack)
    assert caught.value.reason == f"is untrusted: {site.reason}"


def test_parent_swap_before_remove(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = parent_swap_site(sandbox)
    decoy_before = identity(site.decoy)
    pause, attack = paused_after_parent(monkeypatch, pidsafe._read, sandbox, site)

    run_paused(lambda: pidsafe.remove_pidfile(site.path), pause, attack)

    # The victim's own file went, through the directory it resolved.
    assert not site.original.exists()
    assert identity(site.decoy) == decoy_before


def test_parent_swap_before_status(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = parent_swap_site(sandbox)
    pause, attack = paused_after_parent(monkeypatch, pidsafe._status, sandbox, site)

    result = run_paused(lambda: pidsafe.status(site.path), pause, attack)

    assert result.pid == REAL_PID
    assert result.record is not None
    assert result.record.reason == site.reason


def test_parent_swap_before_clean(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, dead_pid: int
) -> None:
    site = parent_swap_site(sandbox)
    # A stale decoy is one that clean_pidfile would remove if it got there.
    write_pid(site.decoy, dead_pid)
    decoy_before = identity(site.decoy)
    pause, attack = paused_after_parent(monkeypatch, pidsafe._status, sandbox, site)

    with pytest.raises(pidsafe.InsecurePidfile) as caught:
        run_paused(lambda: pidsafe.clean_pidfile(site.path), pause, attack)

    assert caught.value.reason == f"refusing to clean it: {site.reason}"
    assert identity(site.decoy) == decoy_before
    assert site.original.exists()


def is_lstat_of(name: str) -> Callable[..., bool]:
    """Return a test for calls of os.stat(name, ..., follow_symlinks=False)."""

    def matches(*args: Any, **kwargs: Any) -> bool:
        return args[0] == name and kwargs.get("follow_symlinks") is False

    return matches


def vanishing_symlink_site(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Pause, Callable[[], None]]:
    """Pause the walk where its open of the attacker's "app" symlink failed.

    The walk then lstats "app" to learn what it is. While the walk waits,
    the attacker removes the symlink. Returns the path to use, the pause
    and the attack.
    """
    decoy = make_decoy(sandbox)
    link = attacker_dir(sandbox) / "app"
    run_as(sandbox.attacker, ["symlink", str(decoy.parent), str(link)])
    pause = Pause()
    stat = pause.before(os.stat, is_lstat_of(link.name))
    monkeypatch.setattr(pidsafe._path, "os", OsWithSeam(stat=stat))

    def attack() -> None:
        run_as(sandbox.attacker, ["unlink", str(link)])

    return link / "app.pid", pause, attack


def test_walk_symlink_removed_read(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, pause, attack = vanishing_symlink_site(sandbox, monkeypatch)

    with pytest.raises(pidsafe.PidfileMissing) as caught:
        run_paused(lambda: pidsafe.read_pidfile(path), pause, attack)

    assert caught.value.path == str(path)
    assert caught.value.reason == f"directory {path.parent} does not exist"


def test_walk_symlink_removed_status(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # status() reports any problem with the path as a state and never raises.
    path, pause, attack = vanishing_symlink_site(sandbox, monkeypatch)

    result = run_paused(lambda: pidsafe.status(path), pause, attack)

    assert result.state == "absent"


def test_remove_file_moved_between_checks(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # remove_pidfile checks the victim's own file twice before unlinking it,
    # and the attacker, who owns the directory, moves the file in between.
    own_dir = attacker_dir(sandbox)
    path = write_pid(own_dir / "app.pid", REAL_PID)
    moved = own_dir / "moved.pid"
    before = identity(path)
    lstats: list[str] = []

    def second_lstat(*args: Any, **kwargs: Any) -> bool:
        if is_lstat_of(path.name)(*args, **kwargs):
            lstats.append(args[0])
        return len(lstats) == 2

    def attack() -> None:
        run_as(sandbox.attacker, ["rename", str(path), str(moved)])

    pause = Pause()
    stat = pause.before(os.stat, second_lstat)
    monkeypatch.setattr(pidsafe._read, "os", OsWithSeam(stat=stat))

    with pytest.raises(pidsafe.PidfileMissing) as caught:
        run_paused(lambda: pidsafe.remove_pidfile(path), pause, attack)

    assert caught.value.path == str(path)
    assert caught.value.reason == "does not exist"
    assert identity(moved) == before


def test_remove_swap_before_unlink(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the last check, the attacker replaces the victim's file with a
    # symlink to the decoy. unlinkat removes the name, never its target.
    decoy = make_decoy(sandbox)
    decoy_before = identity(decoy)
    own_dir = attacker_dir(sandbox)
    path = write_pid(own_dir / "app.pid", REAL_PID)
    moved = own_dir / "moved.pid"
    before = identity(path)

    def attack() -> None:
        run_as(
            sandbox.attacker,
            ["rename", str(path), str(moved)],
            ["symlink", str(decoy), str(path)],
        )

    pause = Pause()
    unlink = pause.before(os.unlink, lambda *args, **kwargs: True)
    monkeypatch.setattr(pidsafe._read, "os", OsWithSeam(unlink=unlink))

    run_paused(lambda: pidsafe.remove_pidfile(path), pause, attack)

    assert identity(decoy) == decoy_before
    assert identity(moved) == before
