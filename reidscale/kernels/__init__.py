"""Memory-bank kernels. Today: the torch reference (``reference``); the Triton and CUDA backends and the
dispatch point that picks CUDA → Triton → torch arrive with the rest of issue 4."""
