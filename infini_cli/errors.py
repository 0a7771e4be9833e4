"""Errors the CLI turns into one line and an exit code (2: bad usage or input)."""


class InputError(ValueError):
    """Bad input from the user: the message names the file and says what to do."""
