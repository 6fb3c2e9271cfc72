"""``ModelConfig``: the ``model`` section of the config tree, ``backbone_from_config`` and the pre-flight
check of its weights, ``weights_problem``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from reidscale.models.registry import Backbone, create_backbone
from reidscale.models.weights import fitting_weights, load_backbone_weights
from reidscale.utils.options import option


@dataclass
class ModelConfig:
    """Which backbone to build and how (see ``reidscale.models.list_backbones()`` for the names)."""

    name: str = option(
        "resnet50_ibn_a",
        "backbone: resnet18/34/50/101/152[_ibn_a], vit_tiny/small/base, resnet50_timm or timm:<timm name>",
    )
    img_size: list[int] = option(
        doc="input size [height, width]; ViT-style timm models are built for it", factory=lambda: [256, 128]
    )
    last_stride: int | None = option(
        None, "stride of the last ResNet stage: 1 (ReID, 16×8 map at 256×128) or 2; null = family default (1)"
    )
    pooling: Literal["avg", "max", "gem", "token"] | None = option(
        None, "global pooling: avg, max or gem (ResNets); token/avg/max (timm models); null = family default"
    )
    gem_p: float = option(3.0, "initial (learnable) GeM exponent, used when pooling is gem")
    drop_path_rate: float = option(0.0, "stochastic depth rate of timm models (0 = off; ResNets take none)")
    weights: str | None = option(
        None,
        "backbone weights to start from (.pt/.pth read without running pickled code, or .safetensors): "
        "reidscale's backbone.pt, torchvision / IBN-Net ResNets, timm ImageNet weights, DINO-style "
        "teacher/student checkpoints; loaded strictly; null = random initialisation",
    )

    @property
    def input_size(self) -> tuple[int, int]:
        """``img_size`` as ``(height, width)``: the one input size of every job (ValueError otherwise)."""
        size = list(self.img_size)
        if len(size) != 2 or any(
            not isinstance(side, int) or isinstance(side, bool) or side < 1 for side in size
        ):
            raise ValueError(
                f"model.img_size must be [height, width] of positive ints, got {self.img_size!r}"
            )
        return int(size[0]), int(size[1])


def backbone_kwargs(config: ModelConfig) -> dict[str, Any]:
    """The ``create_backbone`` keyword arguments ``config`` asks for (unset options are left out)."""
    kwargs: dict[str, Any] = {"img_size": config.input_size}
    if config.last_stride is not None:
        kwargs["last_stride"] = config.last_stride
    if config.pooling is not None:
        kwargs["pooling"] = config.pooling
    if config.pooling == "gem":
        kwargs["gem_p"] = config.gem_p
    if config.drop_path_rate:
        if not 0.0 <= config.drop_path_rate < 1.0:
            raise ValueError(f"model.drop_path_rate must lie in [0, 1), got {config.drop_path_rate}")
        kwargs["drop_path_rate"] = config.drop_path_rate
    return kwargs


def weights_problem(config: ModelConfig) -> str | None:
    """Why ``config.weights`` would not load into the backbone ``config`` describes, as one message starting
    "model.weights: " and naming the file (None when it loads or no weights are set).

    Cheap enough for a pre-flight check: the backbone is built on the meta device (names and shapes, no
    memory); only when that finds a problem is the answer confirmed on a real CPU backbone, so a layer that
    cannot be built on the meta device never produces a false alarm.
    """
    if config.weights is None:
        return None
    try:
        with torch.device("meta"):
            model = create_backbone(config.name, **backbone_kwargs(config))
        fitting_weights(model, config.weights, config.name)
        return None
    except Exception:  # any doubt is settled by the real build below
        pass
    try:
        backbone_from_config(config)
    except ValueError as err:
        return str(err)
    return None


def backbone_from_config(config: ModelConfig) -> Backbone:
    """Build the backbone ``config`` describes and load ``config.weights`` into it when set (ValueError
    naming the option on a bad value, or on a weights file that is missing, unreadable or does not fit)."""
    model = create_backbone(config.name, **backbone_kwargs(config))
    if config.weights is not None:
        try:
            load_backbone_weights(model, config.weights, config.name)
        except (OSError, ValueError) as err:
            raise ValueError(f"model.weights: {err}") from err
    return model
