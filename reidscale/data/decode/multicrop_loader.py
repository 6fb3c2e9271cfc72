"""Decode → crop → multi-crop views in one loader: (record indices [B], views list[Tensor[B, 3, h, w]]).

Two view implementations read the same ``MultiCropSpec`` (``reidscale.data.views``):

* DALI (``dali_multicrop``) on the decoder's device. The decoder of ``dali_pipeline`` streams each video
  as sequences of frames and crops their boxes on the same device, while every view must draw its
  random choices per crop, so the views run in a second DALI pipeline on the same device whose samples
  are single crops. On a GPU the frames go from the decode pipeline into CUDA torch tensors, are cropped
  there, and the crops go into the view pipeline by device-to-device copies, and the views land in CUDA
  torch tensors: no host round trip anywhere.
* torch (``TorchMultiCrop``) on the CPU, for PyAV crops or when DALI is absent; views are moved to the
  loader's device afterwards.

``view_backend="auto"`` takes DALI views whenever DALI is installed and the crop backend is not "pyav".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from reidscale.data.decode.dali_torch import dali_to_torch, torch_device
from reidscale.data.decode.loader import BACKENDS, CropLoader, build_crop_loader, dali_available
from reidscale.data.decode.stats import DecodeStats
from reidscale.data.records import CropRecord
from reidscale.data.views.spec import MultiCropSpec, multicrop_spec
from reidscale.data.views.torch_views import TorchMultiCrop

VIEW_BACKENDS: tuple[str, ...] = ("auto", "dali", "torch")


class DaliViewRunner:
    """A DALI pipeline that turns a batch of uint8 crops into the views of ``spec`` on ``device``.

    ``runner(crops)`` takes uint8 [B, H, W, 3] (CPU tensor for device "cpu", CUDA tensor for "gpu"),
    1 <= B <= max_batch_size, and returns one float32 [B, 3, h, w] tensor per view, in spec order, on the
    same device. ``seed`` fixes DALI's random stream (None: DALI picks one).
    """

    def __init__(
        self,
        spec: MultiCropSpec,
        max_batch_size: int,
        device: str = "cpu",
        num_threads: int = 2,
        seed: int | None = None,
    ) -> None:
        from nvidia.dali import fn, types
        from nvidia.dali.pipeline import Pipeline

        from reidscale.data.views.dali_views import dali_multicrop

        self.spec, self.max_batch_size, self.device = spec, max_batch_size, device
        device_id = torch.cuda.current_device() if device == "gpu" else None
        self.pipe = Pipeline(
            batch_size=max_batch_size,
            num_threads=num_threads,
            device_id=device_id,
            prefetch_queue_depth=1,
            seed=-1 if seed is None else seed,
        )
        with self.pipe:
            crops = fn.external_source(name="crops", device=device, layout="HWC", dtype=types.UINT8)
            self.pipe.set_outputs(*dali_multicrop(crops, spec, device))
        self.pipe.build()

    def __call__(self, crops: torch.Tensor) -> list[torch.Tensor]:
        if crops.dtype != torch.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops: expected uint8 [B, H, W, 3], got {crops.dtype} {list(crops.shape)}")
        if not 1 <= len(crops) <= self.max_batch_size:
            raise ValueError(f"crops: batch of {len(crops)}, expected 1..{self.max_batch_size}")
        if self.device == "gpu":
            target = torch_device(self.device)
            batch = crops.to(target).contiguous()
            stream = torch.cuda.current_stream(target).cuda_stream
            self.pipe.feed_input("crops", batch, layout="HWC", cuda_stream=stream)
        else:
            self.pipe.feed_input("crops", crops.cpu().contiguous().numpy(), layout="HWC")
        return [dali_to_torch(view, torch.float32, self.device) for view in self.pipe.run()]


class ViewLoader:
    """Iterable of (record indices int64 [B], views: list of float32 [B, 3, h, w] in spec order).

    Indices and views are on the loader's device (indices on the CPU); ``stats`` counts decoded frames,
    crops and skipped records of every pass (see ``DecodeStats``).
    """

    def __init__(
        self, crop_loader: CropLoader, spec: MultiCropSpec, view_backend: str, seed: int | None
    ) -> None:
        self.crop_loader, self.spec, self.view_backend = crop_loader, spec, view_backend
        self.device = crop_loader.device
        self._seed = seed
        self._dali_runner: DaliViewRunner | None = None
        self._torch_views = TorchMultiCrop(spec, seed=seed, layout="HWC") if view_backend == "torch" else None

    @property
    def stats(self) -> DecodeStats:
        return self.crop_loader.stats

    def _dali_views(self, crops: torch.Tensor) -> list[torch.Tensor]:
        if self._dali_runner is None:
            num_threads = self.crop_loader.dali_options["num_threads"]
            self._dali_runner = DaliViewRunner(
                self.spec, self.crop_loader.batch_size, self.device, num_threads, self._seed
            )
        return self._dali_runner(crops)

    def _torch_batch(self, crops: torch.Tensor) -> list[torch.Tensor]:
        views = self._torch_views.batch(list(crops.cpu()))
        target = torch_device(self.device)
        return [view.to(target, non_blocking=True) for view in views]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        for indices, crops in self.crop_loader:
            views = self._dali_views(crops) if self.view_backend == "dali" else self._torch_batch(crops)
            yield indices, views


def _resolve_view_backend(view_backend: str, backend: str) -> str:
    if view_backend not in VIEW_BACKENDS:
        raise ValueError(f"view_backend must be one of {VIEW_BACKENDS}, got {view_backend!r}")
    if view_backend == "auto":
        return "dali" if backend != "pyav" and dali_available() else "torch"
    if view_backend == "dali" and not dali_available():
        raise RuntimeError("view_backend='dali' needs nvidia-dali (pip install nvidia-dali-cuda130)")
    return view_backend


def build_view_loader(
    records: Sequence[CropRecord],
    batch_size: int,
    spec: MultiCropSpec | str,
    backend: str = "auto",
    device: str = "cpu",
    source_size: tuple[int, int] | None = None,
    view_backend: str = "auto",
    seed: int | None = None,
    drop_last: bool = False,
    sequence_length: int = 8,
    sequences_per_run: int = 4,
    num_threads: int = 2,
) -> ViewLoader:
    """Loader yielding (record indices int64 [B], views list[float32 [B, 3, h, w]]) in ``spec``'s order.

    records:      video crop records; each served record appears once per pass (skipped ones are counted
                  in ``loader.stats``).
    spec:         a ``MultiCropSpec`` or a recipe name ("cion", "moco", "flip").
    backend:      crop decoding path, as ``build_crop_loader`` ("auto", "dali", "pyav").
    device:       "cpu" or "gpu"; with DALI views on "gpu" decode, crop and views all stay on the GPU.
    source_size:  (H, W) every box is resized to before the views sample from it; default the largest view
                  size of ``spec`` (256×128 for CION).
    view_backend: "dali" (``dali_multicrop``), "torch" (``TorchMultiCrop``, CPU), or "auto" (see module).
    seed:         seed of the view randomness (None: fresh each run).
    Other arguments as ``build_crop_loader``.
    """
    if isinstance(spec, str):
        spec = multicrop_spec(spec)
    if not isinstance(spec, MultiCropSpec):
        raise TypeError(f"spec: expected a MultiCropSpec or a recipe name, got {type(spec).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if source_size is None:
        source_size = max(spec.view_sizes(), key=lambda size: size[0] * size[1])
    crop_loader = build_crop_loader(
        records,
        batch_size,
        source_size,
        backend=backend,
        device=device,
        drop_last=drop_last,
        sequence_length=sequence_length,
        sequences_per_run=sequences_per_run,
        num_threads=num_threads,
    )
    return ViewLoader(crop_loader, spec, _resolve_view_backend(view_backend, crop_loader.backend), seed)
