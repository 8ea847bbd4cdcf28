"""What a flow run writes to the terminal: the flows' own lines (what was read, why training
stopped, where the scores landed) and every warning, without Prefect's "Finished in state
Completed()" line for each task and flow run, which buried them (20 of the 34 lines of a demo).

The filter sits on Prefect's console handler only: the API handler still sends every record,
so each run's whole log, those lines included, stays in the Prefect UI and API. A run that ends
in another state (Failed, Crashed, Cancelled) keeps its line. ``flows/__init__.py`` installs it,
so it holds wherever a flow is imported: ``python -m flows.demo``, ``make demo``, and the flow
runs a worker starts.
"""

from __future__ import annotations

import logging

COMPLETED = "Finished in state Completed("


class HideCompletedRuns(logging.Filter):
    """Drops the INFO record Prefect logs when a task or flow run completes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.INFO
            and record.name.startswith(("prefect.task_runs", "prefect.flow_runs"))
            and record.getMessage().startswith(COMPLETED)
        )


def hide_completed_runs() -> None:
    """Add ``HideCompletedRuns`` to every Prefect console handler of this process, once.

    Prefect replaces its handlers when its logging is set up anew (``setup_logging`` not
    incremental): call this again after that."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # as `from prefect import flow` does; later set-ups keep handlers
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, HideCompletedRuns) for f in handler.filters
            ):
                handler.addFilter(HideCompletedRuns())
