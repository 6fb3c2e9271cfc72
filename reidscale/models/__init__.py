"""Backbones: ``create_backbone(name, **kwargs)`` over our ResNets (plain and IBN-a) and timm models.

Importing the package registers every family (see ``list_backbones()``). The function
``timm_backbone(model_name, ...)`` lives in ``reidscale.models.timm_backbone`` (not re-exported: it would
shadow the module). ``load_backbone_weights(model, path)`` (``weights.py``) loads a weights file in one of
the known layouts strictly; ``ModelConfig.weights`` makes ``backbone_from_config`` do it.
"""

from reidscale.models.config import ModelConfig, backbone_from_config
from reidscale.models.multicrop import MultiCropWrapper, split_crops
from reidscale.models.pooling import POOLINGS, GeneralizedMeanPooling, GlobalPool, build_pooling
from reidscale.models.registry import (
    Backbone,
    create_backbone,
    list_backbones,
    register_backbone,
    register_prefix,
)
from reidscale.models.resnet import IBN, ResNet
from reidscale.models.timm_backbone import TimmBackbone, register_timm_backbone
from reidscale.models.weights import load_backbone_weights, register_weights_filter

__all__ = [
    "IBN",
    "POOLINGS",
    "Backbone",
    "GeneralizedMeanPooling",
    "GlobalPool",
    "ModelConfig",
    "MultiCropWrapper",
    "ResNet",
    "TimmBackbone",
    "backbone_from_config",
    "build_pooling",
    "create_backbone",
    "list_backbones",
    "load_backbone_weights",
    "register_backbone",
    "register_prefix",
    "register_timm_backbone",
    "register_weights_filter",
    "split_crops",
]
