"""A free TCP port on localhost, for the rendezvous of multi-process tests (the package's own function)."""

from __future__ import annotations

from reidscale.utils.ports import free_port

__all__ = ["free_port"]
