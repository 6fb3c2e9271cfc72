"""Where a run stands in its data: the epoch and the micro-batches consumed in it, and how to get back there.

The loader is anything iterable once per epoch (a DataLoader, a list of batches). Its sampler is found as
``loader.batch_sampler`` / ``loader.sampler`` / ``loader`` itself, whichever has ``set_epoch``. A sampler
with ``state_dict`` / ``load_state_dict`` (e.g. ``IdentitySampler``) is restored without reading data;
otherwise the consumed batches are drawn again and dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def find_sampler(loader: Iterable[Any]) -> Any | None:
    """The object whose ``set_epoch`` selects the epoch of ``loader`` (None if there is none)."""
    for candidate in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None), loader):
        if candidate is not None and callable(getattr(candidate, "set_epoch", None)):
            return candidate
    return None


def sampler_state(loader: Iterable[Any]) -> dict[str, Any] | None:
    """The sampler's own state_dict (None when it has none)."""
    sampler = find_sampler(loader)
    if sampler is None or not callable(getattr(sampler, "state_dict", None)):
        return None
    return sampler.state_dict()


def iterate_from(
    loader: Iterable[Any], epoch: int, position: int, saved_sampler_state: dict[str, Any] | None = None
) -> Iterator[Any]:
    """An iterator over ``loader``'s batches of ``epoch`` that starts after the first ``position`` ones."""
    if epoch < 0 or position < 0:
        raise ValueError(f"epoch and position must be >= 0, got epoch={epoch}, position={position}")
    sampler = find_sampler(loader)
    if sampler is not None:
        sampler.set_epoch(epoch)
    can_seek = saved_sampler_state is not None and callable(getattr(sampler, "load_state_dict", None))
    if can_seek and position > 0:
        sampler.load_state_dict({**saved_sampler_state, "epoch": epoch, "position": position})
    iterator = iter(loader)
    if not can_seek:
        for _ in range(position):
            next(iterator)
    return iterator
