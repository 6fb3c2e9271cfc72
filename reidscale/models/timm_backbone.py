"""Adapter turning any timm model into a ReID ``Backbone``: random init, no classifier, ReID input size.

The pooled feature is timm's own (``forward_head(..., pre_logits=True)`` with ``num_classes=0``: token or
average pooling for ViTs, global pooling plus any pre-logits layers for CNNs). Models whose constructor
takes ``img_size`` (ViT, Swin, VOLO, ...) are built for the ReID size, so ``vit_small_patch16_224`` at
256×128 has a 16×8 patch grid; convolutional models take any size and are built without it.

timm's own state_dicts (its ImageNet weights) load through ``model.weights``: the weights filter registered
here drops the classifier that ``pretrained_cfg["classifier"]`` names, passes the rest through the timm
model module's ``checkpoint_filter_fn`` (which resamples ViT position embeddings, e.g. the 14×14 grid of
224×224 to the 16×8 grid of 256×128) and adds the adapter's ``model.`` prefix.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from reidscale.models.registry import Backbone, BackboneFactory, register_backbone, register_prefix
from reidscale.models.weights import register_weights_filter, split_prefix


def _create_timm_model(model_name: str, img_size: tuple[int, int], kwargs: dict[str, Any]) -> Any:
    import timm  # deferred: timm is an optional dependency (the `train` extra)

    if not timm.is_model(model_name):
        raise ValueError(f"model_name {model_name!r} is not a timm model (see timm.list_models())")
    for key in ("pretrained", "num_classes"):
        if key in kwargs:
            raise ValueError(f"{key} is fixed by the adapter (pretrained=False, num_classes=0)")

    def create(**size: Any) -> Any:
        try:
            return timm.create_model(model_name, pretrained=False, num_classes=0, **size, **kwargs)
        except TypeError as err:
            if size and "img_size" in str(err):
                return None  # a convolutional model: its constructor takes no input size
            given = sorted(kwargs)
            raise ValueError(f"timm model {model_name!r} rejected the arguments {given}: {err}") from err

    model = create(img_size=img_size)
    return model if model is not None else create()


class TimmBackbone(Backbone):
    """A timm model behind the ``Backbone`` contract.

    Args:
        model_name: any name ``timm.create_model`` knows.
        img_size: (height, width), passed to models whose constructor takes it.
        pooling: timm ``global_pool`` (e.g. ``token``/``avg`` for ViTs, ``avg``/``max`` for CNNs);
            None keeps the model's default.
        **kwargs: further ``timm.create_model`` arguments (e.g. ``drop_path_rate``).
    """

    def __init__(
        self,
        model_name: str,
        img_size: Sequence[int] = (256, 128),
        pooling: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if len(img_size) != 2 or not all(isinstance(v, int) and v > 0 for v in img_size):
            raise ValueError(f"img_size must be (height, width) with positive ints, got {img_size!r}")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        if pooling is not None:
            kwargs["global_pool"] = pooling
        self.model_name = model_name
        self.model = _create_timm_model(model_name, self.img_size, kwargs)
        # Some timm heads (GhostNet, MobileNetV3, ...) project the pooled map; head_hidden_size is then the
        # width of the pre-logits feature, num_features the width of the map.
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def forward_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] → timm's un-pooled output: [B, C, h, w] (CNNs) or tokens [B, T, C] (ViTs, T
        including class/register tokens)."""
        return self.model.forward_features(images)

    def pool_features(self, features: Tensor) -> Tensor:
        """Output of ``forward_features`` → [B, feature_dim] (timm's pre-logits feature)."""
        return self.model.forward_head(features, pre_logits=True)


@register_weights_filter(TimmBackbone)
def from_timm_state_dict(state: dict[str, Tensor], model: Backbone) -> dict[str, Tensor]:
    """A state_dict of the timm model itself (no ``model.`` prefix) → the adapter's names (see the module
    doc); the adapter's own files (every key under ``model.``) pass unchanged."""
    if all(key.startswith("model.") for key in state):
        return state
    inner = model.model
    classifier = (getattr(inner, "pretrained_cfg", None) or {}).get("classifier")
    for name in (classifier,) if isinstance(classifier, str) else tuple(classifier or ()):
        state = split_prefix(state, f"{name}.")[1]
    timm_filter = getattr(sys.modules.get(type(inner).__module__), "checkpoint_filter_fn", None)
    if timm_filter is not None:
        try:
            state = timm_filter(state, inner)
        except Exception as err:
            raise ValueError(f"timm's checkpoint_filter_fn for {type(inner).__name__} failed: {err}") from err
    return {f"model.{key}": value for key, value in state.items()}


def timm_backbone(model_name: str, img_size: Sequence[int] = (256, 128), **kwargs: Any) -> TimmBackbone:
    """Build ``model_name`` from timm as a backbone (see ``TimmBackbone``)."""
    return TimmBackbone(model_name, img_size=img_size, **kwargs)


def _timm_factory(model_name: str, **defaults: Any) -> BackboneFactory:
    def build(
        img_size: Sequence[int] = (256, 128), pooling: str | None = None, **kwargs: Any
    ) -> TimmBackbone:
        return TimmBackbone(model_name, img_size=img_size, pooling=pooling, **{**defaults, **kwargs})

    build.__doc__ = f"timm {model_name} backbone (see ``TimmBackbone`` for the arguments)."
    return build


def register_timm_backbone(name: str, model_name: str, **defaults: Any) -> None:
    """Register ``name`` as timm's ``model_name`` (``defaults``: extra ``create_model`` arguments)."""
    register_backbone(name)(_timm_factory(model_name, **defaults))


register_prefix("timm", _timm_factory)
register_timm_backbone("vit_tiny", "vit_tiny_patch16_224")
register_timm_backbone("vit_small", "vit_small_patch16_224")
register_timm_backbone("vit_base", "vit_base_patch16_224")
register_timm_backbone("resnet50_timm", "resnet50")
