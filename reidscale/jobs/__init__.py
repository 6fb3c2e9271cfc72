"""Whole jobs behind the CLI commands (fine-tuning, ...), runnable from Python too."""
