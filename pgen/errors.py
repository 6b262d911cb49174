"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class PgenError(Exception):
    """A problem with the user's input: the message names the file, the problem and the fix."""
