"""The one user-facing error type.

A `UserError` is raised for input the user can fix (unknown suite, bad TOML, unwritable output
directory). The CLI catches it at the top, prints its message on one line and exits with status 2.
Case failures are never `UserError`s: they become result rows with a status.
"""


class UserError(Exception):
    """Bad input from the user; the message names the problem and the valid choices."""
