"""Crop shards: person crops packed as WebDataset tar shards with DALI indices and record tables."""

from reidscale.data.shards.dali_stream import DaliShardViewLoader
from reidscale.data.shards.layout import ShardEntry, ShardError, ShardSetInfo, read_dali_index
from reidscale.data.shards.reader import CropShards, ShardCrops, decode_jpeg
from reidscale.data.shards.stream import CropViewLoader, CropViewSet
from reidscale.data.shards.streams import STREAM_BACKENDS, build_view_stream
from reidscale.data.shards.writer import PackedCrop, ShardSetWriter

__all__ = [
    "STREAM_BACKENDS",
    "CropShards",
    "CropViewLoader",
    "CropViewSet",
    "DaliShardViewLoader",
    "PackedCrop",
    "ShardCrops",
    "ShardEntry",
    "ShardError",
    "ShardSetInfo",
    "ShardSetWriter",
    "build_view_stream",
    "decode_jpeg",
    "read_dali_index",
]
