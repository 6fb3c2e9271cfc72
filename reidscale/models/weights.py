"""Backbone weights from a file: ``load_backbone_weights(model, path)`` reads, converts and loads strictly.

The steps, each a public function:

1. ``read_checkpoint``: ``.safetensors`` through safetensors; anything else with
   ``torch.load(map_location="cpu", weights_only=True)``, so no pickled code runs (the one class allowed
   beyond torch's defaults is ``argparse.Namespace``, which DINO-style training scripts store as ``args``).
2. ``find_state_dict``: the mapping of names to tensors inside common containers: ``teacher`` (a DINO-style
   self-distillation checkpoint, the form CION releases; ``student`` when there is no teacher),
   ``state_dict``, ``model``, ``module`` (DeepSpeed); a ``module.`` prefix (DataParallel / DDP) is removed.
3. ``filter_weights``: the filters registered for the model's family (``register_weights_filter``), most
   general first, turn known external layouts into the backbone's names:

   - every backbone: the keys of a wrapped backbone are taken and the rest (heads) dropped:
     ``backbone.*`` (DINO-style models) and ``net.backbone.*`` (reidscale pre-training files written
     before ``heads.pt`` existed); reidscale's own ``backbone.pt`` passes unchanged;
   - ``ResNet`` (resnet.py): torchvision's and the IBN-Net release's classifier ``fc.*`` is dropped (the
     other names already match);
   - ``TimmBackbone`` (timm_backbone.py): a timm state_dict (ImageNet weights) loses its classifier,
     goes through the timm model module's own ``checkpoint_filter_fn`` (ViT position embeddings resampled
     to the ReID patch grid) and gets the adapter's ``model.`` prefix.
4. ``check_weights_fit``: one ValueError naming the file and listing the missing, unexpected and
   shape-mismatched names (each list truncated, with counts), then ``load_state_dict(strict=True)``.
   BatchNorm's ``num_batches_tracked`` counters may be absent (older releases): they are not weights, and
   BatchNorm fills them in.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from reidscale.models.registry import Backbone
from reidscale.utils.registry import Registry

#: container entries searched for the state_dict, in this order (the teacher before the student)
CONTAINER_KEYS = ("teacher", "student", "state_dict", "model", "module")
#: prefixes under which a wrapping model keeps its backbone (reidscale's old pre-training layout, DINO-style)
WRAPPED_BACKBONE_PREFIXES = ("net.backbone.", "backbone.")
#: names listed per kind of mismatch before "... and N more"
MAX_LISTED = 8

WeightsFilter = Callable[[dict[str, Tensor], Backbone], dict[str, Tensor]]
W = TypeVar("W", bound=WeightsFilter)

_FILTERS: Registry[type[Backbone], WeightsFilter] = Registry("weights filter", "class")


# ------------------------------------------------------------------------------------------- reading
def _unpickling_detail(err: Exception) -> str:
    """The reason torch's weights-only unpickler gives, without its advice to turn the check off."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1]
        for line in rest.splitlines():
            if line.strip():
                return line.strip().split(". ", 1)[0]
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _safe_globals() -> contextlib.AbstractContextManager:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext()


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in ``path`` (on the CPU), read without executing pickled code.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file: unreadable, refused by the weights-only unpickler, or a
            ``.safetensors`` file without the safetensors package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading .safetensors needs the safetensors package") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        with _safe_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickling_detail(err)
        if "Unsupported global" in detail:
            raise ValueError(
                f"{path}: refused: the file references Python code that unpickling would run ({detail}); "
                f"save the state_dict alone (torch.save(model.state_dict(), path)) or use .safetensors"
            ) from err
        raise ValueError(
            f"{path}: not a weights file that the weights-only reader accepts ({detail}); save the "
            f"state_dict alone (torch.save(model.state_dict(), path)) or use .safetensors"
        ) from err
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {reason})"
        ) from err


def _is_state_dict(node: Any) -> bool:
    return (
        isinstance(node, Mapping)
        and len(node) > 0
        and all(isinstance(key, str) and isinstance(value, Tensor) for key, value in node.items())
    )


def find_state_dict(checkpoint: Any, source: str | os.PathLike = "checkpoint") -> dict[str, Tensor]:
    """The ``{name: tensor}`` mapping in ``checkpoint`` (see the module doc), ``module.`` prefix removed.

    Raises:
        ValueError: naming ``source`` and what was found, when there is no such mapping.
    """
    node, trail = checkpoint, []
    while not _is_state_dict(node):
        entry = None
        if isinstance(node, Mapping):
            entry = next((key for key in CONTAINER_KEYS if isinstance(node.get(key), Mapping)), None)
        if entry is None:
            where = "".join(f"[{key!r}]" for key in trail) or "the file"
            if isinstance(node, Mapping):
                keys = list(node)
                found = f"a mapping with keys {keys[:MAX_LISTED]}{' ...' if len(keys) > MAX_LISTED else ''}"
                found += " and values of other types than tensors" if keys else ""
            else:
                found = f"a {type(node).__name__}"
            raise ValueError(
                f"{source}: not a state_dict: {where} holds {found}; expected a mapping of parameter names "
                f"to tensors, or one under {', '.join(repr(key) for key in CONTAINER_KEYS)}"
            )
        node, trail = node[entry], [*trail, entry]
    state = dict(node)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


# ------------------------------------------------------------------------------------------- filters
def split_prefix(state: Mapping[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(the entries under prefix with it removed, the other entries)``."""
    inside = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    outside = {key: value for key, value in state.items() if not key.startswith(prefix)}
    return inside, outside


def register_weights_filter(family: type[Backbone]) -> Callable[[W], W]:
    """Decorator registering ``filter(state, model) -> state`` for backbones of class ``family`` (and its
    subclasses). A filter converts the layouts it recognises and returns any other state unchanged; one
    filter per class, duplicates are refused."""
    if not (isinstance(family, type) and issubclass(family, Backbone)):
        raise ValueError(f"a weights filter is registered for a Backbone subclass, got {family!r}")

    return _FILTERS.register(family, what=f"a weights filter for {family.__name__}")


def weights_filters(model: Backbone) -> list[WeightsFilter]:
    """The filters that apply to ``model``, most general class first."""
    return [_FILTERS.get(cls) for cls in reversed(type(model).__mro__) if cls in _FILTERS]


def filter_weights(state: dict[str, Tensor], model: Backbone) -> dict[str, Tensor]:
    """``state`` after every filter that applies to ``model``."""
    for weights_filter in weights_filters(model):
        state = weights_filter(state, model)
    return state


@register_weights_filter(Backbone)
def take_wrapped_backbone(state: dict[str, Tensor], model: Backbone) -> dict[str, Tensor]:
    """The backbone's entries of a model that wraps it (heads dropped): ``net.backbone.*`` or
    ``backbone.*`` keys, unless the model's own names start that way."""
    own = model.state_dict().keys()
    for prefix in WRAPPED_BACKBONE_PREFIXES:
        inside, _ = split_prefix(state, prefix)
        if inside and not any(key.startswith(prefix) for key in own):
            return inside
    return state


# ------------------------------------------------------------------------------------------- loading
def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def weights_mismatch(
    expected: Mapping[str, Sequence[int]],
    found: Mapping[str, Sequence[int]],
    header: str,
    sizes: str = "the file has {found} entries after conversion, the model {expected}",
) -> str | None:
    """The message when the entries ``found`` (name → shape) are not exactly the ``expected`` ones with
    their shapes (BatchNorm's ``num_batches_tracked`` counters may be missing); None when they are.

    The message is ``header`` with the counts and ``sizes`` (formatted with the two entry counts), then one
    line per kind of mismatch listing the names (truncated after ``MAX_LISTED``).
    """
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    different = [
        f"{k} (model {list(expected[k])}, saved {list(found[k])})"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    if not (missing or unexpected or different):
        return None
    lines = [
        f"{header} ({len(missing)} missing, {len(unexpected)} unexpected, {len(different)} of another shape; "
        + sizes.format(found=len(found), expected=len(expected))
        + ")"
    ]
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", different)):
        if names:
            lines.append(f"  {label} ({len(names)}): {_listed(names)}")
    return "\n".join(lines)


def check_weights_fit(
    state: Mapping[str, Tensor], model: Backbone, source: str | os.PathLike, name: str | None = None
) -> None:
    """ValueError naming ``source`` and backbone ``name`` unless ``state`` has exactly the model's entries
    with the model's shapes (``weights_mismatch``)."""
    message = weights_mismatch(
        {key: value.shape for key, value in model.state_dict().items()},
        {key: value.shape for key, value in state.items()},
        f"{source}: the weights do not fit backbone {name or type(model).__name__!r}",
    )
    if message is not None:
        raise ValueError(message)


def fitting_weights(model: Backbone, path: str | os.PathLike, name: str | None = None) -> dict[str, Tensor]:
    """The weights in ``path`` converted to ``model``'s names (steps 1 to 4 of the module doc), checked to
    fit it. ``model`` may live on the meta device: only its names and shapes are read.

    ``name``: the backbone's registry name, for messages. Raises FileNotFoundError or ValueError (naming
    the file) when the file cannot be read or its weights do not fit.
    """
    state = find_state_dict(read_checkpoint(path), path)
    try:
        state = filter_weights(state, model)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    check_weights_fit(state, model, path, name)
    return state


def load_backbone_weights(model: Backbone, path: str | os.PathLike, name: str | None = None) -> Backbone:
    """Load the weights in ``path`` into ``model`` in place (``fitting_weights``, then a strict
    ``load_state_dict``) and return it; FileNotFoundError or ValueError naming the file otherwise."""
    model.load_state_dict(fitting_weights(model, path, name), strict=True)
    return model


# ------------------------------------------------------------------------------------------- writing
def safetensors_available() -> bool:
    """Whether the safetensors package can be imported (it comes with timm)."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        return False
    return True


def save_safetensors(state: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` in the safetensors format (contiguous copies, ``{"format": "pt"}``)."""
    from safetensors.torch import save_file

    save_file({key: value.contiguous() for key, value in state.items()}, str(path), metadata={"format": "pt"})
