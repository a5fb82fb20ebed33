"""The one exception type that the CLI turns into a one-line message and exit code 1.

Raise `UserError` for anything the user can fix (a bad flag, a file that is not a trace, a budget too
small); let everything else propagate, because a traceback there means a bug in moespeq.
"""


class UserError(Exception):
    """Bad input: the message names the value, the problem and what to do instead."""
