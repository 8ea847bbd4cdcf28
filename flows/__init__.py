"""Prefect flows: thin wiring over vae_core (each task calls one library function)."""

from flows.console import hide_completed_runs

hide_completed_runs()  # the terminal: the flows' own lines, not a wall of "Completed()"
