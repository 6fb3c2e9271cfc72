"""DALI pipeline outputs → torch tensors on the pipeline's device, by a device-to-device copy on a GPU."""

from __future__ import annotations

import torch


def torch_device(device: str) -> torch.device:
    """The torch device of a DALI device name: "gpu" → the current CUDA device, "cpu" → the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if device == "gpu" else torch.device("cpu")


def dali_to_torch(batch, dtype: torch.dtype, device: str) -> torch.Tensor:
    """One DALI output batch (TensorListCPU / TensorListGPU of samples of one shape) as a dense torch tensor
    [B, *sample shape] of ``dtype`` on ``device`` ("cpu" or "gpu"), copied on the current CUDA stream."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dense = batch.as_tensor()
    target = torch_device(device)
    out = torch.empty(dense.shape(), dtype=dtype, device=target)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(target) if device == "gpu" else None)
    return out
