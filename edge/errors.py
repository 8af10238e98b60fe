"""The one error type users can cause. The CLI prints its message as one line and exits 2."""


class EdgeError(Exception):
    """A problem the user can fix: bad path, bad bundle, bad text, bad flag.

    The message is one line that says what is wrong and what to do about it.
    """
