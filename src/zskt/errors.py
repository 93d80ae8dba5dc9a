"""The one exception type that the CLI turns into a one-line error message; the one line for an OSError."""

import errno


class ZsktError(Exception):
    """A problem the user can fix (bad option, missing file, wrong checkpoint); the message says how.

    The CLI prints it as a single line `zskt: error: <message>` and exits with status 2; library callers
    get an ordinary exception. Raise it with a message that names what was found and what was expected.
    """


class PeerError(ZsktError):
    """Raised on the other ranks of a distributed run when rank 0 hit a ZsktError (which rank 0 prints): they
    stop with the same exit status, silently, instead of waiting for rank 0 in a collective."""


_OS_FIXES = {
    errno.EACCES: "permission denied; check its permissions or choose another path",
    errno.EPERM: "operation not permitted; check its permissions or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.ENOENT: "no such file or folder (or it cannot be created there); check the path",
    errno.ENOSPC: "no space left on the device; free some space and rerun (an unfinished run keeps its last "
    "checkpoint: add --resume)",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun (an unfinished run keeps its last "
    "checkpoint: add --resume)",
    errno.EROFS: "read-only file system; choose a path on a writable one",
    errno.EISDIR: "it is a folder, a file was expected; check the path",
    errno.EEXIST: "it already exists; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and rerun",
}


def describe_os_error(e: OSError) -> str:
    """An OSError as the one line the CLI prints: the path, what went wrong, and the fix."""
    path = e.filename if e.filename is not None else None
    reason = _OS_FIXES.get(e.errno) or f"{(e.strerror or str(e)).lower()}; check the path and rerun"
    where = f"{path}" + (f" -> {e.filename2}" if e.filename2 is not None else "") if path is not None else ""
    return f"{where}: {reason}" if where else reason
