"""The one exception a user can cause: the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """A mistake the user can fix (bad option, missing or corrupt data, existing run directory)."""
