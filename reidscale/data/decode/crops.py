"""The crops of any records, video boxes and image files alike, resized to one size: ``decode_crops``.

Video records (``frame >= 0``) go through ``build_crop_loader`` (DALI where it decodes the codec on the
device, PyAV for the rest); image records (``frame == -1``) are cropped and resized with PIL (bilinear, as
torchvision's ``Resize`` on PIL images does) in a thread pool. Records that fail are skipped, counted and
named in the ``DecodeStats`` passed in (by their position in ``records``), never raised.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from reidscale.data.decode.geometry import clip_box
from reidscale.data.decode.loader import build_crop_loader
from reidscale.data.decode.stats import BOX_OUTSIDE_FRAME, DecodeStats
from reidscale.data.image_bytes import read_image_bytes
from reidscale.data.records import CropRecord
from reidscale.data.video_probe import VideoInfo

UNREADABLE_IMAGE = "unreadable_image"  # skip reason: the image bytes are missing or PIL cannot decode them
DECODE_BATCH = 64


def load_image_crop(record: CropRecord, out_size: tuple[int, int]) -> np.ndarray | str:
    """PIL crop + bilinear resize of an image record (a file or an LMDB value: ``read_image_bytes``) to
    ``out_size`` (height, width): uint8 [H, W, 3], or the skip reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(read_image_bytes(record.source))) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return UNREADABLE_IMAGE
    x, y, w, h = record.box
    if w > 0 and h > 0:
        box = clip_box(record.box, rgb.width, rgb.height)
        if box is None:
            return BOX_OUTSIDE_FRAME
        x, y, w, h = box
        rgb = rgb.crop((x, y, x + w, y + h))
    resized = rgb.resize((out_size[1], out_size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def decode_crops(
    records: Sequence[CropRecord],
    out_size: tuple[int, int],
    stats: DecodeStats,
    backend: str = "auto",
    device: str = "cpu",
    num_threads: int = 1,
    video_cache: dict[str, VideoInfo] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions int64 [B], crops uint8 [B, H, W, 3])``: the crops of ``records`` that decode, each
    at its position in ``records`` (video records first, in the loader's order, then image records in
    order). ``stats`` receives the counts and the skipped records once the generator is exhausted.
    ``video_cache``: path → probed ``VideoInfo``, shared by calls that read the same videos in pieces (each
    video is then probed once)."""
    video_positions = [i for i, record in enumerate(records) if record.is_video]
    image_positions = [i for i, record in enumerate(records) if not record.is_video]
    if video_positions:
        loader = build_crop_loader(
            [records[i] for i in video_positions],
            DECODE_BATCH,
            out_size,
            backend,
            device,
            num_threads=num_threads,
        )
        if video_cache is not None:
            loader.video_cache = video_cache
        positions = np.asarray(video_positions, dtype=np.int64)
        for indices, batch in loader:
            yield positions[indices.numpy()], batch.cpu().numpy()
        stats.merge(loader.stats, positions=video_positions)
    if image_positions:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            images = pool.map(lambda i: load_image_crop(records[i], out_size), image_positions)
            for position, result in zip(image_positions, images, strict=True):
                if isinstance(result, str):
                    stats.skip_records(result, records[position].source, [position])
                    continue
                stats.crops += 1
                yield np.array([position], dtype=np.int64), result[None]
