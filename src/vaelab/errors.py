"""The one error type vaelab raises for its users."""


class VaelabError(Exception):
    """A problem the user can fix; the message names the problem and the fix.

    The command line prints it as one line and exits with status 2, no traceback.
    """
