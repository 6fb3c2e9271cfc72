"""Rank-list grids: each chosen query followed by its top-k gallery matches, as one PNG (Pillow only).

The ranking follows the evaluation protocol: gallery items sorted by distance (ties by the lower index),
items with the query's pid AND camera skipped. Each gallery cell has a green border when its pid equals the
query's, red otherwise, and a caption "rank: distance"; the query cell has a dark border and its pid.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torch import Tensor

from reidscale.evaluation.metrics import as_label_tensor
from reidscale.utils.io import atomic_write

CORRECT_COLOUR = (0, 190, 0)
WRONG_COLOUR = (220, 0, 0)
QUERY_COLOUR = (40, 40, 40)
EMPTY_COLOUR = (255, 255, 255)
BORDER_WIDTH = 3


def _as_int_tensor(values: Tensor | np.ndarray | Sequence[int], name: str) -> Tensor:
    """pids / camera ids of any array-like as a 1-D int64 tensor on the CPU."""
    return as_label_tensor(values.detach() if isinstance(values, Tensor) else values, name).cpu()


def ranked_gallery(
    distances_row: Tensor,
    qpid: int,
    qcam: int,
    gpids: Tensor | np.ndarray | Sequence[int],
    gcams: Tensor | np.ndarray | Sequence[int],
    topk: int,
) -> tuple[Tensor, Tensor]:
    """The query's top-k gallery items under the evaluation protocol.

    distances_row: [G]; gpids, gcams: [G] → (indices [k] int64, is_correct [k] bool), k = min(topk,
    number of gallery items left after dropping those with pid == qpid and camera == qcam).
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    if not isinstance(distances_row, Tensor) or distances_row.dim() != 1:
        raise ValueError("distances_row must be a 1-D tensor [G]")
    gallery_pids, gallery_cams = _as_int_tensor(gpids, "gpids"), _as_int_tensor(gcams, "gcams")
    if not len(gallery_pids) == len(gallery_cams) == distances_row.numel():
        raise ValueError(
            f"distances_row, gpids and gcams must have the same length, got {distances_row.numel()}, "
            f"{len(gallery_pids)} and {len(gallery_cams)}"
        )
    order = torch.sort(distances_row.detach().cpu(), stable=True).indices
    same_view = (gallery_pids[order] == int(qpid)) & (gallery_cams[order] == int(qcam))
    indices = order[~same_view][:topk]
    return indices, gallery_pids[indices] == int(qpid)


def _load_image(path: str) -> Image.Image:
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as err:
        raise ValueError(f"not a readable image file: {path}") from err


def _render_cell(
    image_path: str, border_colour: tuple[int, int, int], caption: str, cell_size: tuple[int, int]
) -> Image.Image:
    """One grid cell (height, width): the image inside a coloured border, the caption on a dark strip at the
    bottom of the image area (drawn on the cell alone, so it never spills into a neighbour)."""
    height, width = cell_size
    cell = Image.new("RGB", (width, height), border_colour)
    inner_size = (width - 2 * BORDER_WIDTH, height - 2 * BORDER_WIDTH)
    cell.paste(
        _load_image(image_path).resize(inner_size, Image.Resampling.BILINEAR), (BORDER_WIDTH, BORDER_WIDTH)
    )
    draw = ImageDraw.Draw(cell)
    font = ImageFont.load_default()
    left, top, _, bottom = draw.textbbox((0, 0), caption, font=font)
    strip_top = height - BORDER_WIDTH - (bottom - top) - 2
    draw.rectangle(
        (BORDER_WIDTH, strip_top, width - BORDER_WIDTH - 1, height - BORDER_WIDTH - 1), fill=(0, 0, 0)
    )
    draw.text((BORDER_WIDTH + 1 - left, strip_top + 1 - top), caption, fill=(255, 255, 255), font=font)
    return cell


def png_path(output_png: str | Path) -> Path:
    """``output_png`` as a Path after checking it names a ``.png`` file."""
    path = Path(output_png)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output_png must end in .png, got {path}")
    return path


def write_png(output_png: str | Path, image: Image.Image) -> Path:
    """Write ``image`` to ``output_png`` (a ``.png`` path) atomically and return the path."""
    return atomic_write(png_path(output_png), lambda tmp: image.save(tmp, format="PNG"))


def _check_grid_inputs(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    distmat_rows: Tensor,
    query_indices: Sequence[int],
    query_labels: tuple[Tensor, Tensor],
    gallery_labels: tuple[Tensor, Tensor],
    cell_size: tuple[int, int],
) -> None:
    if not isinstance(distmat_rows, Tensor) or distmat_rows.dim() != 2:
        raise ValueError("distmat_rows must be a 2-D tensor [n, G]")
    if distmat_rows.shape[0] != len(query_indices):
        raise ValueError(
            f"distmat_rows has {distmat_rows.shape[0]} rows, query_indices names {len(query_indices)} queries"
        )
    gallery_sizes = (len(gallery_paths), len(gallery_labels[0]), len(gallery_labels[1]))
    if set(gallery_sizes) != {distmat_rows.shape[1]}:
        raise ValueError(
            f"gallery_paths, gallery_pids and gallery_camids have lengths {gallery_sizes}; "
            f"distmat_rows has {distmat_rows.shape[1]} columns"
        )
    query_sizes = (len(query_paths), len(query_labels[0]), len(query_labels[1]))
    if len(set(query_sizes)) != 1:
        raise ValueError(f"query_paths, query_pids and query_camids must have one length, got {query_sizes}")
    if len(query_indices) == 0:
        raise ValueError("query_indices must name at least one query")
    bad = [index for index in query_indices if not 0 <= int(index) < len(query_paths)]
    if bad:
        raise ValueError(f"query_indices {bad} fall outside 0..{len(query_paths) - 1}")
    if len(cell_size) != 2 or min(int(size) for size in cell_size) <= 2 * BORDER_WIDTH + 1:
        raise ValueError(
            f"cell_size must be (height, width) above {2 * BORDER_WIDTH + 1} px, got {cell_size}"
        )


def render_rank_list_grid(
    query_paths: Sequence[str],
    gallery_paths: Sequence[str],
    distmat_rows: Tensor,
    query_indices: Sequence[int],
    query_pids: Tensor | np.ndarray | Sequence[int],
    query_camids: Tensor | np.ndarray | Sequence[int],
    gallery_pids: Tensor | np.ndarray | Sequence[int],
    gallery_camids: Tensor | np.ndarray | Sequence[int],
    topk: int = 10,
    cell_size: tuple[int, int] = (128, 64),
) -> Image.Image:
    """The rank-list grid as an RGB image, in memory (every image file is read here).

    distmat_rows: [n, G], row r holding the distances of query ``query_indices[r]`` (an index into
    query_paths / query_pids / query_camids) to every gallery item. The image is n rows × (topk + 1)
    cells of ``cell_size`` = (height, width) pixels; cells left without a gallery match stay white.
    """
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
    query_labels = (_as_int_tensor(query_pids, "query_pids"), _as_int_tensor(query_camids, "query_camids"))
    gallery_labels = (
        _as_int_tensor(gallery_pids, "gallery_pids"),
        _as_int_tensor(gallery_camids, "gallery_camids"),
    )
    _check_grid_inputs(
        query_paths,
        gallery_paths,
        distmat_rows,
        query_indices,
        query_labels,
        gallery_labels,
        cell_size,
    )
    height, width = int(cell_size[0]), int(cell_size[1])
    distances = distmat_rows.detach().cpu().float()
    canvas = Image.new("RGB", ((topk + 1) * width, len(query_indices) * height), EMPTY_COLOUR)
    for row, query_index in enumerate(int(index) for index in query_indices):
        qpid, qcam = int(query_labels[0][query_index]), int(query_labels[1][query_index])
        top = row * height
        query_cell = _render_cell(query_paths[query_index], QUERY_COLOUR, f"q {qpid}", (height, width))
        canvas.paste(query_cell, (0, top))
        indices, is_correct = ranked_gallery(distances[row], qpid, qcam, *gallery_labels, topk=topk)
        for rank, (gallery_index, correct) in enumerate(
            zip(indices.tolist(), is_correct.tolist(), strict=True), start=1
        ):
            colour = CORRECT_COLOUR if correct else WRONG_COLOUR
            caption = f"{rank}: {float(distances[row, gallery_index]):.3f}"
            cell = _render_cell(gallery_paths[gallery_index], colour, caption, (height, width))
            canvas.paste(cell, (rank * width, top))
    return canvas
