"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class PgenError(Exception):
    """A problem with the user's input: the message names the file, the problem and the fix."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): for one-line errors."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
