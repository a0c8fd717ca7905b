"""The one exception type for mistakes a user can fix.

`UserError` carries a one-paragraph message that names the thing at fault
(path, file and line, config field) and says what to do. The CLI prints it
without a traceback and exits non-zero; the GUI shows it inline.
"""


class UserError(Exception):
    """A problem with the user's input (data, model, config), not a bug."""

    def __init__(self, message: str, *, field: str | None = None, reason: str = "error"):
        super().__init__(message)
        self.message = message
        self.field = field  # dotted RunConfig field name when the fault is a config value
        self.reason = reason  # why a run ended when this error ends it: error | nan | disk_full | out_of_memory

    def __str__(self) -> str:
        return self.message
