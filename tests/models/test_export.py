"""Backbone export: state_dict round trip, ONNX run by onnxruntime against the torch model, failure paths."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch
import torchvision
from torch import nn

import reidscale.export as export_module
from reidscale.export import ExportConfig, export_backbone

IMG = (32, 16)


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×2, global average pool: images [B, 3, H, W] → features [B, 8]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images).mean(dim=(2, 3))


def small_cnn(seed: int = 0) -> SmallCNN:
    """A SmallCNN with non-trivial BatchNorm statistics, so train and eval mode give different outputs."""
    torch.manual_seed(seed)
    model = SmallCNN()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


def resnet18_backbone() -> nn.Module:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def ort_features(path: str, images: torch.Tensor) -> np.ndarray:
    """Run the ONNX file directly with onnxruntime (independent of reidscale.export's own runner)."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_small_cnn_exports_and_matches_torch(tmp_path: Path, dynamo: bool) -> None:
    model = small_cnn().train()
    rng_before = torch.get_rng_state()
    report = export_backbone(model, tmp_path / "out", img_size=IMG, dynamo=dynamo)
    assert torch.equal(torch.get_rng_state(), rng_before), "export must not consume the global RNG"
    assert model.training, "the model's train/eval mode must be restored"
    assert report["exporter"] == ("dynamo" if dynamo else "torchscript")
    assert report["input_shape"] == [3, 3, *IMG] and report["output_shape"] == [3, 8]
    assert 0.0 <= report["max_abs_diff"] <= report["tolerance"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["backbone.onnx", "backbone.pt"]
    # Batch sizes other than the traced one (2) and the checked one (3): the batch axis is dynamic.
    model.eval()
    for batch in (1, 5):
        images = torch.randn(batch, 3, *IMG)
        with torch.no_grad():
            expected = model(images).numpy()
        np.testing.assert_allclose(ort_features(report["onnx"], images), expected, atol=1e-5, rtol=1e-5)


def test_state_dict_reloads_into_fresh_model(tmp_path: Path) -> None:
    model = small_cnn(seed=0)
    report = export_backbone(model, tmp_path, img_size=IMG, onnx=False)
    assert report["onnx"] is None and report["max_abs_diff"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.pt"]
    state = torch.load(report["state_dict"], weights_only=True)  # plain tensors only
    assert set(state) == set(model.state_dict())
    fresh = small_cnn(seed=123)
    images = torch.randn(4, 3, *IMG)
    with torch.no_grad():
        assert not torch.equal(fresh.eval()(images), model.eval()(images))
        fresh.load_state_dict(state)
        assert torch.equal(fresh(images), model(images))


def test_resnet18_exports_with_dynamic_batch(tmp_path: Path) -> None:
    model = resnet18_backbone()
    report = export_backbone(model, tmp_path, img_size=(64, 32))
    assert report["output_shape"] == [3, 512] and report["max_abs_diff"] <= report["tolerance"]
    graph_input = onnx.load(report["onnx"]).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert (
        graph_input.name == "images" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 32]
    )
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    np.testing.assert_allclose(ort_features(report["onnx"], images), expected, atol=1e-4, rtol=1e-4)
    fresh = torchvision.models.resnet18(weights=None)
    fresh.fc = nn.Identity()
    fresh.load_state_dict(torch.load(report["state_dict"], weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), model(images))


def test_timm_vit_with_reid_input_size_exports(tmp_path: Path) -> None:
    """A timm ViT-S (2 blocks) at 256×128, a 16×8 patch grid: attention and the dynamic batch axis."""
    torch.manual_seed(2)
    model = timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=(256, 128), num_classes=0, depth=2
    )
    report = export_backbone(model, tmp_path, img_size=(256, 128))
    assert report["output_shape"] == [3, 384] and report["max_abs_diff"] <= report["tolerance"]
    images = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        expected = model.eval()(images).numpy()
    np.testing.assert_allclose(ort_features(report["onnx"], images), expected, atol=1e-4, rtol=1e-4)


def test_check_false_exports_without_running_onnxruntime(tmp_path: Path, monkeypatch) -> None:
    def must_not_run(path, images):
        raise AssertionError("check=False must not run the ONNX file")

    monkeypatch.setattr(export_module, "run_onnx", must_not_run)
    report = export_backbone(small_cnn(), tmp_path, img_size=IMG, dynamo=False, check=False)
    assert report["max_abs_diff"] is None and report["tolerance"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.onnx", "backbone.pt"]


def test_zero3_partitioned_parameters_are_refused(tmp_path: Path) -> None:
    """DeepSpeed ZeRO-3 leaves each rank an empty ``param.data`` with the full size in ``ds_numel``."""
    model = small_cnn()
    weight = model.body[0].weight
    weight.ds_numel = weight.numel()
    weight.data = torch.empty(0)
    with pytest.raises(
        ValueError,
        match=r"model: 1 parameter tensor\(s\) are ZeRO-3 partitioned \(e\.g\. 'body\.0\.weight'\)",
    ):
        export_backbone(model, tmp_path, img_size=IMG)
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_model_exports_from_float32_copy(tmp_path: Path) -> None:
    model = small_cnn().bfloat16()
    report = export_backbone(model, tmp_path, img_size=IMG)
    state = torch.load(report["state_dict"], weights_only=True)
    assert state["body.0.weight"].dtype == torch.bfloat16, "the state_dict keeps the model's dtype"
    assert next(model.parameters()).dtype == torch.bfloat16, "the model itself is not cast"
    images = torch.randn(2, 3, *IMG)
    with torch.no_grad():
        expected = model.float().eval()(images).numpy()
    np.testing.assert_allclose(ort_features(report["onnx"], images), expected, atol=1e-5, rtol=1e-5)


def test_onnx_output_that_differs_is_caught_and_not_published(tmp_path: Path, monkeypatch) -> None:
    real_run = export_module.run_onnx
    monkeypatch.setattr(export_module, "run_onnx", lambda path, images: real_run(path, images) + 1e-2)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"max \|onnx - torch\| = 1\.0\d*e-02 exceeds the tolerance"):
        export_backbone(small_cnn(), out, img_size=IMG, dynamo=False)
    assert [p.name for p in out.iterdir()] == ["backbone.pt"], "no ONNX file and no scratch left behind"


class ConstantFeatures(nn.Module):
    """Features [B, 3] equal to (100, -50, 3) for every image: max |torch output| = 100 exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor([100.0, -50.0, 3.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :, 0, 0] * 0.0 + self.value


def test_tolerance_is_atol_plus_rtol_times_output_scale(tmp_path: Path, monkeypatch) -> None:
    """Hand-worked: max|torch| = 100, so atol=rtol=1e-4 give 1e-4 + 1e-2 = 1.01e-2; rtol=0 gives 1e-4."""
    real_run = export_module.run_onnx
    monkeypatch.setattr(export_module, "run_onnx", lambda path, images: real_run(path, images) + 5e-3)
    report = export_backbone(ConstantFeatures(), tmp_path / "a", img_size=IMG, dynamo=False)
    assert report["tolerance"] == pytest.approx(1.01e-2, rel=1e-9)
    assert report["max_abs_diff"] == pytest.approx(5e-3, rel=1e-2)
    with pytest.raises(ValueError, match=r"exceeds the tolerance 1\.000e-04"):
        export_backbone(ConstantFeatures(), tmp_path / "b", img_size=IMG, dynamo=False, rtol=0.0)


def test_reexport_replaces_files(tmp_path: Path) -> None:
    export_backbone(small_cnn(seed=0), tmp_path, img_size=IMG, dynamo=False)
    second = small_cnn(seed=5)
    export_backbone(second, tmp_path, img_size=IMG, dynamo=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone.onnx", "backbone.pt"]
    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in second.state_dict().items())
    images = torch.randn(2, 3, *IMG)
    with torch.no_grad():
        expected = second.eval()(images).numpy()
    np.testing.assert_allclose(ort_features(str(tmp_path / "backbone.onnx"), images), expected, atol=1e-5)


class TupleModel(nn.Module):
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images.mean(dim=(2, 3)), images.amax(dim=(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"img_size": (256,)}, r"img_size: expected \(height, width\) as two positive ints, got \(256,\)"),
        ({"img_size": (0, 128)}, "img_size: expected"),
        ({"img_size": (256.0, 128)}, "img_size: expected"),
        ({"img_size": "256x128"}, "img_size: expected"),
        ({"opset": 17}, r"opset: expected an int in \[18, 23\] for the dynamo exporter, got 17"),
        ({"opset": 21, "dynamo": False}, r"opset: expected an int in \[9, 20\] for the torchscript"),
        ({"atol": -1.0}, "atol/rtol: expected non-negative"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        export_backbone(small_cnn(), tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == [], "nothing is written on bad arguments"


def test_bad_out_dir_and_model_are_named(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"out_dir: '.*file\.txt' exists and is not a directory"):
        export_backbone(small_cnn(), a_file, img_size=IMG)
    with pytest.raises(ValueError, match="out_dir: expected a directory path, got ''"):
        export_backbone(small_cnn(), "", img_size=IMG)
    with pytest.raises(ValueError, match=r"model: expected a torch\.nn\.Module, got dict"):
        export_backbone({}, tmp_path / "x", img_size=IMG)
    with pytest.raises(ValueError, match="model: expected the forward pass to return one tensor, got tuple"):
        export_backbone(TupleModel(), tmp_path / "y", img_size=IMG, dynamo=False)


def test_export_config_mirrors_export_backbone_keywords(tmp_path: Path) -> None:
    defaults = {
        name: param.default
        for name, param in inspect.signature(export_backbone).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "img_size"
    }
    assert dataclasses.asdict(ExportConfig()) == defaults
    config = ExportConfig(dynamo=False, opset=17)
    report = export_backbone(small_cnn(), tmp_path, img_size=IMG, **dataclasses.asdict(config))
    assert (report["exporter"], report["opset"]) == ("torchscript", 17)
