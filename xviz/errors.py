"""The one exception type a user sees: a mistake in their input, said in one line."""


class XvizError(Exception):
    """A user-facing failure: the message says what went wrong and what to do.

    The CLI prints it as a single line and exits with code 2, without a traceback.
    """
