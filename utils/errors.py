"""One exception type for mistakes a user can fix; scripts print it as a single line."""


class UserError(Exception):
    """Bad config, missing data, corrupt checkpoint, NaN loss: says what is wrong and how to fix it."""
