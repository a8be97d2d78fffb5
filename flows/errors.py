"""How a failed ``unetflow`` command ends: one line ``error: …`` on stderr and exit status 1.

A run that stops on its input (nothing accepted, a ``dataset.json`` missing) is an answer for the
person at the terminal, not a bug report; yet Prefect's engine logs the failed flow run's traceback
to the console and Python prints it again: some 75 lines around one sentence. Unless ``--debug`` is
given, :func:`cli_errors` turns any exception into that one line and keeps the engine's records on the
console without their traceback. The traceback still reaches Prefect's API log (the dashboard):
only the console copy is trimmed, and only in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from typer.exceptions import Abort, Exit, TyperException

#: Loggers of Prefect's flow and task engines ("Encountered exception during execution", "Task run failed").
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
#: Exceptions of our own packages say what went wrong in words; others are shown with their type.
_OUR_PACKAGES = ("flows.", "tasks.", "monai_ext.")


@contextmanager
def cli_errors(debug: bool) -> Iterator[None]:
    """Around one command: unless ``debug``, an exception becomes ``error: <message>`` and exit 1.

    Typer's own exits (``Exit(2)`` of a config error, usage errors, Ctrl-C) pass through unchanged.
    """
    if debug:
        yield
        return
    trimmer = _TrimOnConsole()
    for name in ENGINE_LOGGERS:
        logging.getLogger(name).addFilter(trimmer)
    try:
        yield
    except (Exit, Abort, TyperException):
        raise
    except Exception as error:
        typer.secho(f"error: {one_line(error)}", fg=typer.colors.RED, err=True)
        raise Exit(1) from None
    finally:
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).removeFilter(trimmer)
        for handler in logging.getLogger().handlers:
            handler.removeFilter(trimmer.trim)


def one_line(error: BaseException) -> str:
    """The exception as one line: its message (lines joined), with its type unless it is one of ours."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    ours = type(error).__module__.startswith(_OUR_PACKAGES)
    if ours and text:
        return text
    return f"{type(error).__name__}: {text} (unetflow --debug … shows the traceback)"


class _NoTraceback(logging.Filter):
    """On a console handler: an engine record is shown without its traceback (its message stays)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(ENGINE_LOGGERS):
            # The record is shared: the API handler of the engine logger has already formatted it
            # (traceback included); the console handler of the root logger comes last.
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class _TrimOnConsole(logging.Filter):
    """On the engine loggers: puts :class:`_NoTraceback` on Prefect's console handlers before each record.

    Prefect configures logging (and creates its console handler) when the first flow starts, after
    the CLI's callback, so the handler filter is attached when the first engine record arrives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trim = _NoTraceback()

    def filter(self, record: logging.LogRecord) -> bool:
        for handler in logging.getLogger().handlers:
            if type(handler).__name__ == "PrefectConsoleHandler" and self.trim not in handler.filters:
                handler.addFilter(self.trim)
        return True
