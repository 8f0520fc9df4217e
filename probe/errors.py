"""The one exception type users see: bad input they can fix."""


class ProbeError(Exception):
    """Bad input or state the user can fix. The CLI prints its message on one line, exit code 2."""
