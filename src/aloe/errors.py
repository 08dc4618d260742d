"""User-facing errors: one line that names the file, record or key and what is wrong."""

from __future__ import annotations


class AloeError(Exception):
    """An error caused by the user's input or settings.

    The CLI prints ``str(error)`` as a single line (no traceback) and exits with status 2.
    """


class InputFileError(AloeError):
    """A file that cannot be read or holds something invalid.

    Parameters
    ----------
    path
        The offending file.
    problem
        What is wrong, as a short phrase.

    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
