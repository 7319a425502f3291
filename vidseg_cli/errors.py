"""User-facing errors: the CLI prints the message on one line and exits with code 2."""


class VidsegError(Exception):
    """Bad input or an output that cannot be written; the message is shown to the user."""

    exit_code = 2
