"""The one exception type the CLI turns into a one-line error message."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, an image, a serial line): reported in one line, exit 2."""
