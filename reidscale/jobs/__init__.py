"""Whole jobs behind the CLI commands, runnable from Python too: the one training job (``train``), the config
root of each command (``roots``), the files a run leaves (``outputs``) and the demo (``demo``)."""
