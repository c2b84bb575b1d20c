"""Errors that are the user's to fix.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; the library raises it
wherever input (a file, a column, an argument) is wrong, with a message that names the file, the
column, the unit and what was expected.
"""


class UserError(ValueError):
    """Bad input: a wrong argument, file, column or value. Printed as one line, exit code 2."""
