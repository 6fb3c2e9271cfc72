"""The tracker interface every backend implements, the no-op tracker for ranks ≠ 0, and the fan-out tracker.

Step rule shared by all backends: ``step=None`` means one after the last step this tracker logged (0 for the
first call); an explicit step must be an integer ≥ 0 and never smaller than the last one (wandb silently drops
rows logged at a smaller step, so every backend refuses them instead). The same step may be logged twice.

Metric values are plain scalars: Python/numpy bool, int or float, or a one-element torch/numpy array. They
are converted to Python ``bool``/``int``/``float`` before any backend sees them, so every backend writes
exactly the same numbers.
"""

from __future__ import annotations

import numbers
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
MetricValue = bool | int | float


def to_metric_value(key: str, value: Any) -> MetricValue:
    """``value`` as a Python bool, int or float; ValueError naming ``key`` for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    torch = sys.modules.get("torch")  # a tensor exists only if torch is imported; never import it here
    if isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor)):
        element_count = value.size if isinstance(value, np.ndarray) else value.numel()
        if element_count == 1:
            return to_metric_value(key, value.item())
        raise ValueError(f"metric {key!r} must be a scalar, got an array of shape {tuple(value.shape)}")
    raise ValueError(f"metric {key!r} must be a bool, int or float, got {type(value).__name__}: {value!r}")


def check_metrics(metrics: Mapping[str, Any]) -> dict[str, MetricValue]:
    """Validated copy of ``metrics``: non-empty string keys, scalar values converted by to_metric_value."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping of name → number, got {type(metrics).__name__}")
    checked: dict[str, MetricValue] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric names must be non-empty strings, got {key!r}")
        checked[key] = to_metric_value(key, value)
    return checked


def plain_config(config: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Deep copy of a nested config made of builtins only (what JSON and wandb both accept).

    Mappings become dicts (string keys only), tuples/lists become lists, paths become strings, numpy and
    torch scalars become Python numbers; anything else raises ValueError naming its dotted position.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(config).__name__}")
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise ValueError(f"{where} has a non-string key {key!r}; config keys must be strings")
        plain[key] = _plain_value(value, f"{where}.{key}")
    return plain


def _plain_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return plain_config(value, where)
    if isinstance(value, (list, tuple)):
        return [_plain_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        return to_metric_value(where, value)
    except ValueError:
        raise ValueError(
            f"{where} has a value of type {type(value).__name__} ({value!r}); config values must be "
            "str, bool, int, float, None, paths, or lists/mappings of those"
        ) from None


def check_step(step: Any) -> int:
    """``step`` as a Python int ≥ 0; ValueError otherwise."""
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0 or None, got {step!r}")
    return int(step)


class Tracker(ABC):
    """Experiment tracker: metrics per step, the run config, images, progress bars. Use on rank 0 only.

    Subclasses implement ``_write_metrics``, ``_write_config``, ``_write_image`` and (if they hold
    resources) ``_close``; the public methods validate inputs and resolve steps once for all backends.
    A tracker is a context manager: leaving the block calls ``finish`` (marking the run failed on an error).
    """

    def __init__(self) -> None:
        self._last_step: int | None = None
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    def log(self, metrics: Mapping[str, float | int], step: int | None = None) -> None:
        """Record scalar ``metrics`` at ``step`` (see the module docstring for the step rule)."""
        self._check_open("log")
        self._write_metrics(check_metrics(metrics), self._resolve_step(step))

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the resolved run config (a nested mapping; see plain_config for allowed values)."""
        self._check_open("log_config")
        self._write_config(plain_config(config))

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        """Record the image file at ``path`` under ``key`` at ``step``."""
        self._check_open("log_image")
        if not isinstance(key, str) or not key:
            raise ValueError(f"image key must be a non-empty string, got {key!r}")
        if caption is not None and not isinstance(caption, str):
            raise ValueError(f"caption must be a string or None, got {type(caption).__name__}")
        image_path = Path(path)
        if not image_path.is_file():
            raise FileNotFoundError(f"image file for {key!r} not found: {image_path}")
        self._write_image(key, image_path, self._resolve_step(step), caption)

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
        """``iterable`` wrapped in a progress display; the default shows nothing and yields it unchanged."""
        return iterable

    def finish(self) -> None:
        """Flush and close the backend; calling it again does nothing."""
        self._finish_once(failed=False)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._finish_once(failed=exc_type is not None)

    def _finish_once(self, failed: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._close(failed)

    def _check_open(self, method: str) -> None:
        if self._finished:
            raise RuntimeError(f"{type(self).__name__}.{method} called after finish()")

    def _resolve_step(self, step: int | None) -> int:
        if step is None:
            resolved = 0 if self._last_step is None else self._last_step + 1
        else:
            resolved = check_step(step)
            if self._last_step is not None and resolved < self._last_step:
                raise ValueError(
                    f"step must not decrease: got step={resolved} after step {self._last_step} "
                    f"was logged to {type(self).__name__}"
                )
        self._last_step = resolved
        return resolved

    @abstractmethod
    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None: ...

    @abstractmethod
    def _write_config(self, config: dict[str, Any]) -> None: ...

    @abstractmethod
    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None: ...

    def _close(self, failed: bool) -> None:  # noqa: B027 - optional hook; most backends hold nothing
        """Release the backend's resources; ``failed`` is True when leaving a ``with`` block on an error."""


class NullTracker(Tracker):
    """Accepts every call and does nothing, without even validating: the tracker of ranks ≠ 0."""

    def log(self, metrics: Mapping[str, float | int], step: int | None = None) -> None:
        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        pass

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        pass

    def _write_config(self, config: dict[str, Any]) -> None:
        pass

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        pass


class MultiTracker(Tracker):
    """Sends every call to each of ``trackers`` in order, with the step resolved once for all of them."""

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        super().__init__()
        for tracker in trackers:
            if not isinstance(tracker, Tracker):
                raise ValueError(f"MultiTracker takes Tracker instances, got {type(tracker).__name__}")
        self.trackers: list[Tracker] = list(trackers)

    def _write_metrics(self, metrics: dict[str, MetricValue], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(metrics, step=step)

    def _write_config(self, config: dict[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_config(config)

    def _write_image(self, key: str, path: Path, step: int, caption: str | None) -> None:
        for tracker in self.trackers:
            tracker.log_image(key, path, step=step, caption=caption)

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterable[T]:
        """Each tracker wraps the result of the previous one; only display backends add anything."""
        for tracker in self.trackers:
            iterable = tracker.progress(iterable, total=total, desc=desc)
        return iterable

    def _close(self, failed: bool) -> None:
        """Close every tracker even when one fails, then raise the first error."""
        first_error: BaseException | None = None
        for tracker in self.trackers:
            try:
                tracker._finish_once(failed)
            except Exception as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
