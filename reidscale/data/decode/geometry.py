"""Box clipping and the one crop-and-resize rule both decoding paths follow.

Resize rule (both paths): bilinear sampling of the **full frame** at the box's pixel grid, with
continuous coordinates (pixel ``i`` covers ``[i, i+1)``, its centre is ``i + 0.5``). Output pixel ``(r, c)``
of an ``(H_out, W_out)`` crop of box ``(x, y, w, h)`` samples the frame at

    u = x + (c + 0.5) · w / W_out,   v = y + (r + 0.5) · h / H_out        (continuous coordinates)

i.e. the affine map ``[[w/W_out, 0, x], [0, h/H_out, y]]`` from output to input coordinates, which is what
DALI's ``warp_affine`` (``inverse_map=True``) applies. Samples outside the frame are clamped to the border.
No antialiasing filter: DALI has no per-frame ROI resize, so the GPU path uses per-frame ``warp_affine``, and
the CPU path reproduces it exactly so that both paths agree up to decoder differences. Person boxes are
usually smaller than the 256×128 training size (upscaling), where antialiasing changes nothing; strong
downscaling (box more than 2× the output) aliases and is better avoided by choosing ``out_size``.
"""

from __future__ import annotations

import numpy as np
import torch

Box = tuple[int, int, int, int]


def clip_box(box: Box, width: int, height: int) -> Box | None:
    """Intersection of ``box`` (x, y, w, h) with a ``width``×``height`` frame; None when it is empty."""
    x, y, w, h = box
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + w, width), min(y + h, height)
    if right <= left or bottom <= top:
        return None
    return (left, top, right - left, bottom - top)


def crop_to_output_affine(box: Box, out_size: tuple[int, int]) -> np.ndarray:
    """The (2, 3) float32 matrix mapping output (x, y, 1) to frame coordinates for ``box`` → ``out_size``."""
    x, y, w, h = box
    out_h, out_w = out_size
    return np.array([[w / out_w, 0.0, x], [0.0, h / out_h, y]], dtype=np.float32)


def _sample_positions(
    start: int, extent: int, out_extent: int, limit: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Lower/upper source indices and the upper weight for one axis (centre coordinates, border clamp)."""
    steps = torch.arange(out_extent, dtype=torch.float64, device=device)
    centres = (start + (steps + 0.5) * (extent / out_extent) - 0.5).clamp(0.0, limit - 1.0)
    lower = centres.floor().to(torch.int64)
    upper = (lower + 1).clamp(max=limit - 1)
    return lower, upper, (centres - lower).to(torch.float32)


def crop_and_resize_tensor(frame: torch.Tensor, box: Box, out_size: tuple[int, int] | None) -> torch.Tensor:
    """Crop ``box`` from ``frame`` (uint8 [H, W, C] torch tensor, on any device) and resize it to
    ``out_size`` (H, W) by the rule above, on the frame's device.

    ``box`` must already be clipped to the frame. ``out_size=None`` returns the exact pixels of the box
    (a copy). Returns uint8 [out_h, out_w, C] (or [h, w, C]).
    """
    x, y, w, h = box
    if out_size is None:
        return frame[y : y + h, x : x + w].clone()
    out_h, out_w = out_size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_size must be two positive integers (H, W), got {out_size!r}")
    rows_lo, rows_hi, row_weight = _sample_positions(y, h, out_h, frame.shape[0], frame.device)
    cols_lo, cols_hi, col_weight = _sample_positions(x, w, out_w, frame.shape[1], frame.device)
    # Bilinear is separable: blend the needed rows of the box's region, then the needed columns.
    top, left = int(rows_lo[0]), int(cols_lo[0])
    region = frame[top : int(rows_hi[-1]) + 1, left : int(cols_hi[-1]) + 1].to(torch.float32)
    rows_lo, rows_hi, cols_lo, cols_hi = rows_lo - top, rows_hi - top, cols_lo - left, cols_hi - left
    row_weight = row_weight[:, None, None]
    rows = region[rows_lo] * (1 - row_weight) + region[rows_hi] * row_weight
    col_weight = col_weight[None, :, None]
    blended = rows[:, cols_lo] * (1 - col_weight) + rows[:, cols_hi] * col_weight
    return blended.round().clamp(0, 255).to(torch.uint8)


def crop_and_resize(frame: np.ndarray, box: Box, out_size: tuple[int, int] | None) -> np.ndarray:
    """``crop_and_resize_tensor`` for a numpy frame (uint8 [H, W, C]): uint8 numpy [out_h, out_w, C]."""
    return crop_and_resize_tensor(torch.from_numpy(np.ascontiguousarray(frame)), box, out_size).numpy()
