"""Multi-crop views: one spec (``spec``), a torch CPU implementation and a DALI implementation.

``dali_views`` is imported on demand (it needs nvidia-dali): ``from reidscale.data.views.dali_views import
dali_multicrop``.
"""

from reidscale.data.views.sampling import centre_crop_fallback, erase_box, sample_resized_crop
from reidscale.data.views.spec import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    CropSpec,
    MultiCropSpec,
    cion_multicrop,
    flip_only,
    moco_two_view,
    multicrop_spec,
)
from reidscale.data.views.torch_views import (
    TorchMultiCrop,
    ViewParams,
    apply_view,
    flip_view,
    sample_flip,
    sample_view_params,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "CropSpec",
    "MultiCropSpec",
    "TorchMultiCrop",
    "ViewParams",
    "apply_view",
    "centre_crop_fallback",
    "cion_multicrop",
    "erase_box",
    "flip_only",
    "flip_view",
    "moco_two_view",
    "multicrop_spec",
    "sample_flip",
    "sample_resized_crop",
    "sample_view_params",
]
