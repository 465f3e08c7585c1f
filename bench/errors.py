"""The one user-facing error type.

A `UserError` is raised for input the user can fix (unknown suite, bad TOML, unwritable output
directory). The CLI catches it at the top, prints its message on one line and exits with status 2.
Case failures are never `UserError`s: they become result rows with a status. A `CaseError` is a
case failure whose message says all a user needs (a full disk): its row's reason is the message
alone, without the exception type and source line other failures get.
"""


class UserError(Exception):
    """Bad input from the user; the message names the problem and the valid choices."""


class CaseError(Exception):
    """A case failed for a reason its message states completely (recorded as an error row)."""
