"""One exception type for bad input, so callers (CLI, service) can report it as one line."""


class NegseqError(ValueError):
    """Bad input: the message names what was wrong and where (file, column, row, token)."""
