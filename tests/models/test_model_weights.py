"""Weights files into backbones: every known layout against a real instance of the model that wrote it
(torchvision, IBN-Net names, timm at 224×224, DINO-style teacher/student, reidscale's old and new files),
the refusal of pickled code, and the strict-loading message."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reidscale.models import ModelConfig, ResNet, backbone_from_config, create_backbone, load_backbone_weights
from reidscale.models import weights as weights_module
from reidscale.models.registry import Backbone
from reidscale.models.resnet import drop_classifier
from reidscale.models.weights import (
    find_state_dict,
    read_checkpoint,
    register_weights_filter,
    take_wrapped_backbone,
    weights_filters,
)

timm = pytest.importorskip("timm")


def _images(height: int = 64, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _randomised(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Same names and shapes, new random values (float entries; integer counters kept)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.rand(value.shape, generator=generator) + 0.5
        if value.is_floating_point()
        else value.clone()
        for key, value in state.items()
    }


def _assert_holds(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


# ----------------------------------------------------------------------------------------------- ResNet


def test_torchvision_resnet50_state_dict_loads_and_reproduces_its_feature_map(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(reference.state_dict(), path)  # with the classifier fc.*

    ours = backbone_from_config(ModelConfig(name="resnet50", last_stride=2, weights=str(path))).eval()
    images = _images(128, 64)
    trunk = nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        expected = trunk(images)
        got = ours.forward_features(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not any(key.startswith("fc.") for key in ours.state_dict())


def test_ibn_net_release_names_load_into_the_ibn_a_variant(tmp_path: Path) -> None:
    model = create_backbone("resnet18_ibn_a")
    # the IBN-Net release: bn1 of the blocks of layer1-3 split into IN / BN, an ImageNet classifier,
    # and (older torch) no BatchNorm num_batches_tracked counters
    release = _randomised(model.state_dict(), seed=1)
    release = {key: value for key, value in release.items() if not key.endswith("num_batches_tracked")}
    release["fc.weight"], release["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    for name in ("layer1.0.bn1.IN.weight", "layer3.1.bn1.IN.bias", "layer2.0.bn1.BN.running_var"):
        assert name in release
    path = tmp_path / "resnet18_ibn_a.pth"
    torch.save(release, path)

    load_backbone_weights(model, path)
    state = model.state_dict()
    for key, value in release.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert int(state["bn1.num_batches_tracked"]) == 0


# ----------------------------------------------------------------------------------------------- timm


def test_timm_vit_small_at_224_loads_at_256x128_with_resampled_positions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch16_224", pretrained=False)  # 14×14 patches, 1000 classes
    file_state = {key: value.clone() for key, value in source.state_dict().items()}
    path = tmp_path / "vit_small_patch16_224.pth"
    torch.save(file_state, path)

    ours = load_backbone_weights(create_backbone("vit_small", img_size=(256, 128)), path).eval()

    # position embeddings: class token kept, the 14×14 grid resized bicubically (antialiased) to 16×8
    pos = file_state["pos_embed"]
    grid = pos[:, 1:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(16, 8), mode="bicubic", antialias=True, align_corners=False)
    expected_pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 128, 384)], dim=1)
    state = ours.state_dict()
    torch.testing.assert_close(state["model.pos_embed"], expected_pos, rtol=1e-5, atol=1e-6)
    assert not any(key.startswith("model.head.") for key in state)  # the classifier was dropped
    for key, value in file_state.items():
        if key not in ("pos_embed", "head.weight", "head.bias"):
            assert torch.equal(state[f"model.{key}"], value), key

    reference = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=(256, 128)
    ).eval()
    kept = {k: v for k, v in file_state.items() if not k.startswith("head.")}
    reference.load_state_dict({**kept, "pos_embed": expected_pos})
    images = _images(256, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=1e-4, atol=1e-5)


def test_timm_resnet_state_dict_loads_into_the_timm_prefix_backbone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False).eval()  # with its fc classifier
    path = tmp_path / "timm_resnet18.pth"
    torch.save(source.state_dict(), path)
    ours = load_backbone_weights(create_backbone("timm:resnet18"), path).eval()
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(images), source.forward_features(images))
        torch.testing.assert_close(ours(images), source.forward_head(source.forward_features(images), True))


# ----------------------------------------------------------------------------------------------- DINO


def _dino_branch(backbone: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A DDP-wrapped DINO model's state_dict: module.backbone.* (random values) + module.head.*."""
    branch = {f"module.backbone.{k}": v for k, v in _randomised(backbone.state_dict(), seed).items()}
    branch["module.head.mlp.0.weight"] = torch.randn(64, 512)
    branch["module.head.last_layer.weight_g"] = torch.ones(128, 1)
    return branch


def test_dino_checkpoint_gives_the_teacher_backbone_and_drops_the_heads(tmp_path: Path) -> None:
    torchvision_trunk = torchvision.models.resnet18(weights=None)
    torchvision_trunk.fc = nn.Identity()  # as DINO builds its ResNet backbones
    teacher, student = _dino_branch(torchvision_trunk, 1), _dino_branch(torchvision_trunk, 2)
    checkpoint = {
        "student": student,
        "teacher": teacher,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet18", out_dim=128),  # DINO's main_dino.py saves its args
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    model = load_backbone_weights(create_backbone("resnet18"), path)
    _assert_holds(
        model, {k.removeprefix("module.backbone."): v for k, v in teacher.items() if "backbone" in k}
    )

    torch.save({"student": student, "epoch": 3}, path)  # no teacher: the student is taken
    model = load_backbone_weights(create_backbone("resnet18"), path)
    _assert_holds(
        model, {k.removeprefix("module.backbone."): v for k, v in student.items() if "backbone" in k}
    )


def test_dino_vit_teacher_loads_into_a_timm_vit_at_the_reid_size(tmp_path: Path) -> None:
    dino_vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)  # DINO's names
    teacher = _dino_branch(dino_vit, 3)
    path = tmp_path / "dino_vit_tiny.pth"
    torch.save({"teacher": teacher, "student": _dino_branch(dino_vit, 4)}, path)
    model = load_backbone_weights(create_backbone("vit_tiny", img_size=(256, 128)), path)
    state = model.state_dict()
    assert state["model.pos_embed"].shape == (1, 129, 192)
    assert torch.equal(
        state["model.blocks.0.attn.qkv.weight"], teacher["module.backbone.blocks.0.attn.qkv.weight"]
    )


# ----------------------------------------------------------------------------------------------- reidscale


def test_reidscale_run_outputs_and_the_old_pretrain_layout_load(tmp_path: Path) -> None:
    from reidscale.jobs.outputs import write_run_outputs
    from reidscale.objectives.selective.config import SelectiveConfig
    from reidscale.objectives.selective.heads import SelectiveFeatures, SelectiveNet

    torch.manual_seed(0)
    trained = create_backbone("resnet18")
    expected = _randomised(trained.state_dict(), seed=5)
    trained.load_state_dict(expected)
    net = SelectiveNet(trained, SelectiveConfig(global_dim=8, local_dim=4, num_stripes=2))
    heads = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}
    paths = write_run_outputs(tmp_path, trained.state_dict(), None, {"steps": 0}, heads=heads)
    assert {path.name for path in paths.values()} == {
        "backbone.pt",
        "backbone.safetensors",
        "heads.pt",
        "results.json",
    }
    assert set(torch.load(paths["heads"], weights_only=True)) == set(heads)
    for name in ("weights", "safetensors"):
        _assert_holds(load_backbone_weights(create_backbone("resnet18"), paths[name]), expected)
    create_backbone("resnet18").load_state_dict(torch.load(paths["weights"], weights_only=True), strict=True)

    old = tmp_path / "old_pretrain_backbone.pt"  # the test-feature model's state_dict: net.backbone.* + heads
    torch.save(SelectiveFeatures(net, "concat").state_dict(), old)
    assert any(key.startswith("net.global_fc.") for key in torch.load(old, weights_only=True))
    _assert_holds(load_backbone_weights(create_backbone("resnet18"), old), expected)


def test_containers_and_module_prefix_are_unwrapped(tmp_path: Path) -> None:
    expected = _randomised(create_backbone("resnet18").state_dict(), seed=6)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in expected.items()}, "epoch": 5}, path)
    _assert_holds(load_backbone_weights(create_backbone("resnet18"), path), expected)
    torch.save({"model": expected, "optimizer": {}}, path)
    _assert_holds(load_backbone_weights(create_backbone("resnet18"), path), expected)


# ----------------------------------------------------------------------------------------------- refusals


class _TouchOnLoad:
    """Unpickling this calls Path.touch on the marker: code that a weights file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        ("torch.save", r"evil\.pt: refused: the file references Python code .*Unsupported global"),
        ("pickle.dump", r"evil\.pt: not a weights file that the weights-only reader accepts"),
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_that_would_run_code_is_refused_without_running_it(
    tmp_path: Path, writer: str, message: str
) -> None:
    marker = tmp_path / "code_ran"
    payload = {"conv1.weight": torch.zeros(1), "payload": _TouchOnLoad(marker)}
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle)
    with pytest.raises(ValueError, match=message) as err:
        load_backbone_weights(create_backbone("resnet18"), path)
    assert "weights_only=False" not in str(err.value)
    assert not marker.exists()


def test_unreadable_and_non_state_dict_files_are_named(tmp_path: Path) -> None:
    model = create_backbone("resnet18")
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*absent\.pt"):
        load_backbone_weights(model, tmp_path / "absent.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes\.pt: not a weights file that the weights-only reader"):
        load_backbone_weights(model, text)
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pt: not a readable PyTorch weights file"):
        load_backbone_weights(model, text)
    truncated = tmp_path / "truncated.pt"
    torch.save(model.state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"truncated\.pt: not a readable PyTorch weights file"):
        load_backbone_weights(model, truncated)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"broken\.safetensors: not a readable safetensors file"):
        load_backbone_weights(model, broken)
    listing = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(ValueError, match=r"list\.pt: not a state_dict: the file holds a list"):
        load_backbone_weights(model, listing)
    mixed = tmp_path / "mixed.pt"
    torch.save({"epoch": 3, "best": {"acc": 0.5}}, mixed)
    with pytest.raises(ValueError, match=r"mixed\.pt: not a state_dict: .*\['epoch', 'best'\]"):
        load_backbone_weights(model, mixed)
    with pytest.raises(ValueError, match=r"^model\.weights: .*list\.pt: not a state_dict"):
        backbone_from_config(ModelConfig(name="resnet18", weights=str(listing)))
    with pytest.raises(ValueError, match=r"^model\.weights: weights file not found"):
        backbone_from_config(ModelConfig(name="resnet18", weights=str(tmp_path / "absent.pt")))


def test_mismatch_message_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state = dict(create_backbone("resnet18").state_dict())
    del state["layer2.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        backbone_from_config(ModelConfig(name="resnet18", weights=str(path)))
    message = str(err.value)
    assert message.startswith(f"model.weights: {path}: the weights do not fit backbone 'resnet18'")
    assert "(1 missing, 1 unexpected, 1 of another shape;" in message
    assert "missing (1): layer2.0.conv1.weight" in message
    assert "unexpected (1): layer9.weight" in message
    assert "shape mismatch (1): conv1.weight (model [64, 3, 7, 7], saved [64, 3, 3, 3])" in message


def test_mismatch_message_is_truncated_with_counts(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError) as err:
        load_backbone_weights(create_backbone("resnet18"), path, "resnet18")
    message = str(err.value)
    unexpected = [k for k in torchvision.models.resnet50().state_dict() if k.startswith("layer1.0.conv3")]
    assert unexpected and unexpected[0] in message
    assert "unexpected (198): " in message and "... and 190 more" in message
    assert "shape mismatch (23): " in message and "... and 15 more" in message
    assert len(message) < 2000 and message.count("\n") == 2


# ----------------------------------------------------------------------------------------------- registry


def test_filters_apply_most_general_first_and_duplicates_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert weights_filters(create_backbone("resnet18")) == [take_wrapped_backbone, drop_classifier]
    monkeypatch.setattr(weights_module, "_FILTERS", weights_module._FILTERS.copy())
    with pytest.raises(ValueError, match="already registered"):
        register_weights_filter(ResNet)(drop_classifier)
    with pytest.raises(ValueError, match="Backbone subclass"):
        register_weights_filter(nn.Module)

    class Wrapping(Backbone):  # a family whose own names start with backbone.: left as they are
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Linear(2, 2)

    state = {"backbone.weight": torch.ones(2, 2), "backbone.bias": torch.zeros(2)}
    assert take_wrapped_backbone(state, Wrapping()) == state


def test_read_checkpoint_keeps_a_safetensors_file_flat(tmp_path: Path) -> None:
    from reidscale.models.weights import save_safetensors

    state = {"a.weight": torch.arange(6.0).reshape(2, 3).t(), "b": torch.ones(2)}  # a non-contiguous entry
    path = tmp_path / "flat.safetensors"
    save_safetensors(state, path)
    read = read_checkpoint(path)
    assert set(read) == {"a.weight", "b"} and torch.equal(read["a.weight"], state["a.weight"])
    assert find_state_dict(read, path) == read
