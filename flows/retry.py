"""Retry policy shared by the flows: transient I/O and tracking failures are retried with
backoff; user errors (bad input, bad config) fail at once, since retrying cannot fix them."""

from __future__ import annotations

# PermissionError: a refused call (tracking.access.AccessRefused) is refused again
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, TypeError, PermissionError)
BACKOFF = [2, 8, 30]  # seconds between the attempts


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is a user error."""
    try:
        state.result()
    except USER_ERRORS:
        return False
    except Exception:  # anything else may be transient
        return True
    return False
