"""Console tracker: one compact line per log call on stderr, tqdm progress bars on long work.

Line format: ``step 120 | loss 1.2345 | lr 5.00e-04``. Floats with magnitude in [1e-3, 1e5) are shown with
four decimals, other non-zero floats in scientific notation with three significant digits; ints as they are.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from reidscale.tracking.base import MetricValue, Tracker

T = TypeVar("T")


def format_metric_value(value: MetricValue) -> str:
    """Short human-readable form of one metric value (see the module docstring)."""
    if isinstance(value, (bool, int)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0.0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.2e}"


def format_metric_line(metrics: Mapping[str, MetricValue], step: int) -> str:
    """``step <step> | <name> <value> | ...`` in the order of ``metrics``."""
    parts = [f"step {step}"] + [f"{key} {format_metric_value(value)}" for key, value in metrics.items()]
    return " | ".join(parts)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted.key, leaf value) pairs of a nested config, depth first in insertion order."""
    pairs: list[tuple[str, Any]] = []
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten_config(value, prefix=f"{dotted}."))
        else:
            pairs.append((dotted, value))
    return pairs


class ConsoleTracker(Tracker):
    """Prints to ``stream`` (default: whatever ``sys.stderr`` is at the time of the call).

    show_progress: False turns progress bars off; True lets tqdm decide (it hides them when the stream is
    not a terminal, so batch-job logs are not flooded).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        show_progress: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._stream = stream
        self.show_progress = show_progress
        if config is not None:
            self.log_config(config)

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        self._print(format_metric_line(metrics, step))

    def _write_config(self, config: dict[str, Any]) -> None:
        for key, value in flatten_config(config):
            self._print(f"config | {key} = {value!r}")

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        suffix = f" ({caption})" if caption else ""
        self._print(f"step {step} | image {key}: {path}{suffix}")

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
        """``iterable`` wrapped in a tqdm bar on this tracker's stream."""
        return tqdm(
            iterable,
            total=total,
            desc=desc or None,
            file=self.stream,
            disable=None if self.show_progress else True,
            dynamic_ncols=True,
        )
