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


#: Most characters of an exception's message kept in a one-line reason (tables, logs, error lines).
MAX_MESSAGE = 300


def exception_message(exc: BaseException) -> str:
    """The first line of ``exc``'s message, at most :data:`MAX_MESSAGE` characters; its type name when empty.

    For a reason phrased around the exception (``not readable as extxyz (<message>)``).
    """
    text = str(exc).strip().splitlines()
    return (text[0].strip()[:MAX_MESSAGE] if text else "") or type(exc).__name__


def one_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (at most :data:`MAX_MESSAGE` characters of it): a failure's reason.

    The one text of an exception that aloe records (failed rows, failed structures, log lines).
    """
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {(text[0].strip() if text else '')[:MAX_MESSAGE]}"
