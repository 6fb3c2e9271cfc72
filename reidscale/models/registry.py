"""The backbone registry: ``create_backbone(name, **kwargs)`` and the ``Backbone`` contract.

A backbone maps images [B, 3, H, W] to pooled features [B, C] (``forward``) and to the un-pooled output of
its last stage (``forward_features``: a map [B, C, h, w] for convolutional nets, tokens [B, T, C] for
vision transformers). It carries ``feature_dim`` (= C of the pooled feature) and ``img_size`` (the
(height, width) it is meant to see, used by export and benchmarks). No classifier: heads belong to the
objectives.

A family registers a factory once; further members are one-liners::

    register_backbone("resnet50_ibn_a")(partial(build_resnet, "resnet50", ibn=True))
    register_timm_backbone("convnext_tiny", "convnext_tiny")    # timm_backbone.py

Names of the form ``prefix:rest`` go to a prefix resolver (``timm:<any timm model name>``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import Tensor, nn

from reidscale.utils.registry import Registry


class Backbone(nn.Module):
    """Base class of every backbone (see the module docstring). Subclasses set ``feature_dim`` and
    ``img_size`` and implement ``forward_features`` and ``pool_features``."""

    feature_dim: int
    img_size: tuple[int, int]

    def forward_features(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        """[B, 3, H, W] → un-pooled [B, C, h, w] (or tokens [B, T, C])."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_features")

    def pool_features(self, features: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Output of ``forward_features`` → pooled [B, C]."""
        raise NotImplementedError(f"{type(self).__name__} must implement pool_features")

    def forward(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] → pooled features [B, feature_dim]."""
        return self.pool_features(self.forward_features(images))


BackboneFactory = Callable[..., Backbone]
F = TypeVar("F", bound=BackboneFactory)

_BACKBONES: Registry[str, BackboneFactory] = Registry("backbone")
_PREFIXES: Registry[str, Callable[[str], BackboneFactory]] = Registry("backbone prefix")


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering ``factory(**kwargs) -> Backbone`` under ``name``; duplicates are refused."""
    if not name or ":" in name:
        raise ValueError(f"backbone name must be a non-empty string without ':', got {name!r}")

    return _BACKBONES.register(name)


def register_prefix(prefix: str, resolver: Callable[[str], BackboneFactory]) -> None:
    """Route names ``"<prefix>:<rest>"`` to ``resolver(rest)``, which returns the factory to call."""
    _PREFIXES.add(prefix, resolver)


def list_backbones() -> list[str]:
    """Registered backbone names, sorted (prefix forms such as ``timm:<name>`` are listed as ``timm:*``)."""
    return sorted(_BACKBONES) + sorted(f"{prefix}:*" for prefix in _PREFIXES)


def _resolve(name: str) -> BackboneFactory:
    if not isinstance(name, str):
        raise ValueError(f"backbone name must be a string, got {type(name).__name__}")
    if name in _BACKBONES:
        return _BACKBONES.get(name)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in _PREFIXES and rest:
        return _PREFIXES.get(prefix)(rest)
    raise _BACKBONES.unknown(name, known=list_backbones())


def create_backbone(name: str, **kwargs: object) -> Backbone:
    """Build the backbone registered as ``name`` with the factory's keyword arguments.

    ValueError for an unknown name (listing the known ones) or for keyword arguments the factory does not
    take (listing those it does).
    """
    factory = _resolve(name)
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(p for p in signature.parameters if p != "kwargs") or "none"
        raise ValueError(f"backbone {name!r}: {err}; accepted keyword arguments: {accepted}") from None
    return factory(**kwargs)
