"""The one exception type that the CLI turns into a one-line error message."""


class ZsktError(Exception):
    """A problem the user can fix (bad option, missing file, wrong checkpoint); the message says how.

    The CLI prints it as a single line `zskt: error: <message>` and exits with status 2; library callers
    get an ordinary exception. Raise it with a message that names what was found and what was expected.
    """


class PeerError(ZsktError):
    """Raised on the other ranks of a distributed run when rank 0 hit a ZsktError (which rank 0 prints): they
    stop with the same exit status, silently, instead of waiting for rank 0 in a collective."""
