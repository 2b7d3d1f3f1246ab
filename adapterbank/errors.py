"""The one exception type users see: a message that fits on one line and says what to do."""


class AdapterBankError(Exception):
    """A problem caused by the user's input or environment, not by a bug.

    The CLI prints its message as a single line and exits non-zero; `--debug` shows the traceback.
    """
