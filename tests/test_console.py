"""The terminal of a flow run (flows/console.py): the flows' own lines and any failure, not a
"Finished in state Completed()" per task and flow run; the Prefect API still gets every line."""

import contextlib
import io
import logging

from prefect import flow, get_run_logger, task

import flows  # noqa: F401 - importing the flows installs the console filter, as for the demo
from flows.console import HideCompletedRuns

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_only_completed_runs_lose_their_line():
    keep = HideCompletedRuns().filter
    assert not keep(_record("prefect.task_runs", logging.INFO, "Finished in state Completed()"))
    assert not keep(_record("prefect.flow_runs", logging.INFO, "Finished in state Completed()"))
    failed = "Finished in state Failed('Task run encountered an exception ValueError')"
    assert keep(_record("prefect.task_runs", logging.ERROR, failed))
    assert keep(_record("prefect.flow_runs", logging.INFO, "Finished in state Cancelled()"))
    assert keep(_record("prefect.flow_runs", logging.INFO, "scores written to /x.parquet"))
    assert keep(_record("myapp", logging.INFO, "Finished in state Completed()"))  # not Prefect's


@task
def _step(i: int) -> int:
    return i


@flow(name="console-check")
def _three_steps() -> str:
    for i in range(3):
        _step(i)
    get_run_logger().info("scores written to /tmp/console-check.parquet")
    from prefect.runtime import flow_run

    return flow_run.id


@contextlib.contextmanager
def _terminal():
    """What Prefect's console handler prints, into a buffer; the run loggers at INFO,
    Prefect's default, whatever PREFECT_LOGGING_LEVEL the caller set (`make` sets WARNING)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    (handler,) = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    levels = {name: logging.getLogger(name).level for name in RUN_LOGGERS}
    out, terminal = io.StringIO(), handler.console.file
    handler.console.file = out  # the handler prints through a rich Console
    for name in RUN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        yield out
    finally:
        handler.console.file = terminal
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_a_flow_run_shows_its_own_lines_and_the_api_keeps_every_line(harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    with _terminal() as out:
        run_id = _three_steps()
    shown = out.getvalue()
    assert "scores written to /tmp/console-check.parquet" in shown, shown
    assert "Beginning flow run" in shown, shown
    assert "Finished in state" not in shown, shown

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    sent = [log.message for log in logs]
    assert sent.count("Finished in state Completed()") == 4, sent  # three tasks and the flow
    assert "scores written to /tmp/console-check.parquet" in sent
