"""Decoding and cropping of video crop records: PyAV (CPU), DALI (CPU / GPU), one loader, rank sharding.

Both paths take ``CropRecord``s (video path, 0-based frame, box) and return the same crops (see
``geometry`` for the crop+resize rule and ``..video_probe`` for frame numbering). DALI is imported lazily,
so this package works without it (PyAV only).
"""

from reidscale.data.decode.dali_pipeline import (
    DALI_CPU_CODECS,
    DALI_GPU_CODECS,
    crop_records_dali,
    dali_video_stream_pipeline,
)
from reidscale.data.decode.geometry import clip_box, crop_and_resize
from reidscale.data.decode.loader import CropLoader, build_crop_loader, dali_available
from reidscale.data.decode.multicrop_loader import (
    VIEW_BACKENDS,
    DaliViewRunner,
    ViewLoader,
    build_view_loader,
)
from reidscale.data.decode.pyav_reader import crop_records_pyav
from reidscale.data.decode.sharding import shard_records
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.video_probe import VideoInfo, VideoOpenError, probe_video

__all__ = [
    "DALI_CPU_CODECS",
    "DALI_GPU_CODECS",
    "VIEW_BACKENDS",
    "CropLoader",
    "DaliViewRunner",
    "DecodeStats",
    "VideoInfo",
    "VideoOpenError",
    "ViewLoader",
    "build_crop_loader",
    "build_view_loader",
    "clip_box",
    "crop_and_resize",
    "crop_records_dali",
    "crop_records_pyav",
    "dali_available",
    "dali_video_stream_pipeline",
    "probe_video",
    "shard_records",
]
