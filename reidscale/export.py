"""Export a backbone: a plain ``state_dict`` (``backbone.pt``) and ONNX (``backbone.onnx``), checked.

The ONNX graph maps images ``[B, 3, H, W]`` (float32, ``B`` dynamic) to features ``[B, D]``. After export the
file is run with onnxruntime on a random batch of a *different* size than the one traced (so the dynamic batch
axis is exercised) and compared with the torch model; files are published (renamed into ``out_dir``) only
when that check passes, so a failed check never leaves a wrong ``backbone.onnx`` behind.

Exporters (torch 2.14): ``dynamo=True`` (default, ``torch.export`` based; needs ``onnxscript``, which pulls
in ``onnx``) or ``dynamo=False`` (the deprecated TorchScript exporter, a fallback for models that
``torch.export`` cannot trace). The check needs ``onnxruntime``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reidscale.utils.io import atomic_write
from reidscale.utils.options import option

STATE_DICT_NAME = "backbone.pt"
ONNX_NAME = "backbone.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "features"
TRACE_BATCH = 2
CHECK_BATCH = 3
#: opsets each exporter can write (dynamo translates natively from 18; TorchScript stops at 20)
OPSET_RANGE = {True: (18, 23), False: (9, 20)}


@dataclass
class ExportConfig:
    """``reidscale export`` options: ``export_backbone(model, out_dir, img_size=..., **asdict(config))``."""

    onnx: bool = option(True, "also write backbone.onnx (dynamic batch axis) beside backbone.pt")
    opset: int = option(18, "ONNX opset: 18-23 with the dynamo exporter, 9-20 with the TorchScript one")
    check: bool = option(True, "run the ONNX file with onnxruntime on random images and compare with torch")
    dynamo: bool = option(True, "torch.export based exporter; false = the TorchScript exporter (fallback)")
    atol: float = option(1e-4, "check tolerance: max |onnx - torch| <= atol + rtol * max |torch|")
    rtol: float = option(1e-4, "check tolerance, relative to the largest torch feature value")
    seed: int = option(0, "seed of the check's random images (the global RNG is not touched)")


def export_backbone(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    img_size: tuple[int, int] = (256, 128),
    onnx: bool = True,
    opset: int = 18,
    check: bool = True,
    dynamo: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``out_dir/backbone.pt`` and (``onnx=True``) ``out_dir/backbone.onnx`` for ``model``.

    Args:
        model: maps images [B, 3, H, W] to one feature tensor [B, D]; exported in eval mode (its
            train/eval mode is restored afterwards). Non-float32 weights are exported from a float32 copy.
        out_dir: directory to write into (created when missing; must not be a file).
        img_size: (H, W) of the input images.
        onnx: also export ONNX; ``check`` then runs it with onnxruntime against torch.
        opset: ONNX opset (18..23 with ``dynamo=True``, 9..20 with the TorchScript exporter).
        dynamo: use the ``torch.export`` based exporter (else the TorchScript one).
        atol, rtol: the check fails when max|onnx - torch| > atol + rtol * max|torch|.
        seed: seed of the check's random input (a private generator; the global RNG is untouched).

    Returns:
        ``"state_dict"`` and ``"onnx"`` paths (str; ``"onnx"`` None without ONNX), ``"onnx_data"`` (paths of
        side weight files, written only past protobuf's 2 GB limit), ``"max_abs_diff"`` and ``"tolerance"``
        (None without a check), ``"input_shape"`` / ``"output_shape"`` of the check batch, ``"opset"``,
        ``"exporter"``.

    Raises:
        ValueError: bad arguments, or an ONNX output further from torch than the tolerance.
    """
    _check_args(model, out_dir, img_size, opset, dynamo, atol, rtol)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "state_dict": str(save_state_dict(model, out / STATE_DICT_NAME)),
        "onnx": None,
        "onnx_data": [],
        "max_abs_diff": None,
        "tolerance": None,
        "input_shape": None,
        "output_shape": None,
        "opset": opset if onnx else None,
        "exporter": ("dynamo" if dynamo else "torchscript") if onnx else None,
    }
    if onnx:
        report.update(_export_onnx_checked(model, out, img_size, opset, dynamo, check, atol, rtol, seed))
    return report


def save_state_dict(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model.state_dict()`` as plain CPU tensors (no module pickles) to ``path``, atomically."""
    plain = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    return atomic_write(path, lambda tmp: torch.save(plain, tmp))


def _check_args(
    model: Any, out_dir: Any, img_size: Any, opset: Any, dynamo: bool, atol: float, rtol: float
) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    partitioned = [name for name, p in model.named_parameters() if hasattr(p, "ds_numel") and p.numel() == 0]
    if partitioned:
        raise ValueError(
            f"model: {len(partitioned)} parameter tensor(s) are ZeRO-3 partitioned (e.g. {partitioned[0]!r});"
            " export inside deepspeed.zero.GatheredParameters(model.parameters()) or from saved weights"
        )
    if not isinstance(out_dir, (str, os.PathLike)) or str(out_dir) == "":
        raise ValueError(f"out_dir: expected a directory path, got {out_dir!r}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"out_dir: {str(out_dir)!r} exists and is not a directory")
    valid_size = (
        isinstance(img_size, (tuple, list))
        and len(img_size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in img_size)
    )
    if not valid_size:
        raise ValueError(f"img_size: expected (height, width) as two positive ints, got {img_size!r}")
    low, high = OPSET_RANGE[bool(dynamo)]
    if not isinstance(opset, int) or isinstance(opset, bool) or not low <= opset <= high:
        exporter = "dynamo" if dynamo else "torchscript"
        raise ValueError(
            f"opset: expected an int in [{low}, {high}] for the {exporter} exporter, got {opset!r}"
        )
    if not (atol >= 0 and rtol >= 0):
        raise ValueError(f"atol/rtol: expected non-negative tolerances, got atol={atol!r} rtol={rtol!r}")


def _float32_model(model: nn.Module) -> nn.Module:
    """``model`` itself when all its floating tensors are float32, else a float32 copy of it."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def _export_onnx_checked(
    model: nn.Module,
    out: Path,
    img_size: tuple[int, int],
    opset: int,
    dynamo: bool,
    check: bool,
    atol: float,
    rtol: float,
    seed: int,
) -> dict[str, Any]:
    """Export into a scratch directory beside ``out``, check, then rename the files into ``out``."""
    net = _float32_model(model)
    was_training = net.training
    net.eval()
    scratch = Path(tempfile.mkdtemp(prefix=f".{ONNX_NAME}.", dir=out))
    try:
        _write_onnx(net, scratch / ONNX_NAME, img_size, opset, dynamo)
        result: dict[str, Any] = {}
        if check:
            result = check_onnx(net, scratch / ONNX_NAME, img_size, atol=atol, rtol=rtol, seed=seed)
        return {**result, **_publish(scratch, out)}
    finally:
        net.train(was_training)
        shutil.rmtree(scratch, ignore_errors=True)


def _write_onnx(net: nn.Module, path: Path, img_size: tuple[int, int], opset: int, dynamo: bool) -> None:
    """Trace ``net`` on [TRACE_BATCH, 3, H, W] and write ONNX with a dynamic batch axis to ``path``."""
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    example = torch.zeros(TRACE_BATCH, 3, *img_size, device=device)
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                net, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False, **names
            )
            program.save(path)  # weights go to a side file only past protobuf's 2 GB limit
        else:
            axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            with warnings.catch_warnings():  # chosen on purpose: silence "legacy exporter" deprecations
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (example,), path, dynamo=False, dynamic_axes=axes, **names)


def check_onnx(
    model: nn.Module,
    onnx_path: str | os.PathLike,
    img_size: tuple[int, int],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``onnx_path`` with onnxruntime (CPU) and ``model`` (eval mode) on one random batch
    [CHECK_BATCH, 3, H, W]; raise ValueError when max|onnx - torch| > atol + rtol * max|torch|."""
    reference, images = _torch_features(model, img_size, seed)
    produced = run_onnx(onnx_path, images)
    if produced.shape != reference.shape:
        raise ValueError(
            f"ONNX check: output shape {list(produced.shape)} != torch output shape {list(reference.shape)}"
        )
    max_abs_diff = float(np.max(np.abs(produced.astype(np.float64) - reference))) if reference.size else 0.0
    tolerance = atol + rtol * (float(np.max(np.abs(reference))) if reference.size else 0.0)
    if not max_abs_diff <= tolerance:
        raise ValueError(
            f"ONNX check: max |onnx - torch| = {max_abs_diff:.3e} exceeds the tolerance {tolerance:.3e} "
            f"(atol={atol}, rtol={rtol}); the ONNX file was not published"
        )
    return {
        "max_abs_diff": max_abs_diff,
        "tolerance": tolerance,
        "input_shape": list(images.shape),
        "output_shape": list(produced.shape),
    }


def _torch_features(model: nn.Module, img_size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random images [CHECK_BATCH, 3, H, W] (float32) and the model's features for them (float64)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(CHECK_BATCH, 3, *img_size, generator=generator)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(images.to(device))
    finally:
        model.train(was_training)
    if not isinstance(output, Tensor):
        raise ValueError(
            f"model: expected the forward pass to return one tensor, got {type(output).__name__}"
        )
    return output.detach().cpu().double().numpy(), images.numpy()


def run_onnx(onnx_path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Features [B, D] of ``images`` [B, 3, H, W] (float32) from the ONNX file (onnxruntime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.astype(np.float32)})[0]


def _publish(scratch: Path, out: Path) -> dict[str, Any]:
    """Move the side data files (if any), then the ONNX file, from ``scratch`` into ``out`` (renames)."""
    data_files = sorted(p for p in scratch.iterdir() if p.name != ONNX_NAME)
    for data_file in data_files:
        os.replace(data_file, out / data_file.name)
    onnx_path = out / ONNX_NAME
    os.replace(scratch / ONNX_NAME, onnx_path)
    return {"onnx": str(onnx_path), "onnx_data": [str(out / p.name) for p in data_files]}
