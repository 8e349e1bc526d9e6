"""The one exception type for mistakes a user can fix: shown as one line, never a traceback."""


class UserError(Exception):
    """A bad input or a missing precondition; the message names the input and the fix."""
