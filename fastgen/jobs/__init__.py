"""Offline jobs over image files: the resumable results file, one process, and torchrun ranks."""
