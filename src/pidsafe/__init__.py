"""Read, hold, check and remove PID files safely.

pidsafe reads a PID file without following symlinks, opening anything but a
regular file, blocking, or accepting anything but one PID in 1..pid_max; it
judges the whole path by who could have written it; and it removes only the
file it checked, by inode. `PidFile` holds a PID file for a running service
under an exclusive lock and tells a recycled PID from the file's writer.
`stop` and `signal_pidfile` signal the recorded process only after
corroborating that it wrote the file, through a pidfd where Linux has one.
See the README for the guarantees and their limits.
"""

from ._errors import (
    AlreadyRunning,
    IdentityMismatch,
    InsecurePidfile,
    InvalidPidfile,
    NotRunning,
    PidfileError,
    PidfileMissing,
    PidfileNotRegular,
    PidfilePermissionError,
    PidfileSymlink,
    PidfileTooLarge,
    UnsafeSymlink,
    UnsupportedPlatform,
)
from ._hold import PidFile
from ._parse import FALLBACK_PID_MAX, MAX_PIDFILE_SIZE, parse_pid, pid_max
from ._path import AVOIDS_SYMLINK_ATTACKS, USES_O_PATH
from ._process import is_alive
from ._read import (
    PidDirectory,
    PidfileRecord,
    read_pidfile,
    read_pidfile_safely,
    remove_pidfile,
    unlink_pidfile_safely,
)
from ._runtime import RuntimeDirError, runtime_dir
from ._status import Status, clean_pidfile, status
from ._stop import (
    DEFAULT_SCHEDULE,
    USES_PIDFD,
    SentSignal,
    StopProgress,
    StopResult,
    signal_pidfile,
    stop,
)

__version__ = "0.1.0"

__all__ = [
    "AVOIDS_SYMLINK_ATTACKS",
    "DEFAULT_SCHEDULE",
    "FALLBACK_PID_MAX",
    "MAX_PIDFILE_SIZE",
    "USES_O_PATH",
    "USES_PIDFD",
    "AlreadyRunning",
    "IdentityMismatch",
    "InsecurePidfile",
    "InvalidPidfile",
    "NotRunning",
    "PidDirectory",
    "PidFile",
    "PidfileError",
    "PidfileMissing",
    "PidfileNotRegular",
    "PidfilePermissionError",
    "PidfileRecord",
    "PidfileSymlink",
    "PidfileTooLarge",
    "RuntimeDirError",
    "SentSignal",
    "Status",
    "StopProgress",
    "StopResult",
    "UnsafeSymlink",
    "UnsupportedPlatform",
    "__version__",
    "clean_pidfile",
    "is_alive",
    "parse_pid",
    "pid_max",
    "read_pidfile",
    "read_pidfile_safely",
    "remove_pidfile",
    "runtime_dir",
    "signal_pidfile",
    "status",
    "stop",
    "unlink_pidfile_safely",
]
