"""Foundations: the typed config, threshold policies and the tie rule, the upper-tail
thresholds and anomaly probability of scores, checks of score and label arrays, atomic
file writes. No model, no data. Imports nothing above it.

Layers: docs/architecture.md.
"""
