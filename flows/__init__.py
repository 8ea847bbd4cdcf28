"""Prefect flows: thin wiring over vae_core (each task calls one library function)."""
