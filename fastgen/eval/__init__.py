"""Measuring a classifier: accuracy metrics, distribution shifts, model-vs-human, the demo and the
speed benchmark. Everything here calls the public API; nothing below imports it."""
