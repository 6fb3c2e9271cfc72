"""Backbones: our ResNets against torchvision, IBN-a placement and counts, pooling formulas, the timm adapter
against timm itself, the registry and the model config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from reidscale.config.loader import build_config
from reidscale.models import (
    IBN,
    GeneralizedMeanPooling,
    ModelConfig,
    ResNet,
    TimmBackbone,
    backbone_from_config,
    build_pooling,
    create_backbone,
    list_backbones,
    register_backbone,
    register_timm_backbone,
)
from reidscale.models import registry as registry_module
from reidscale.models.timm_backbone import timm_backbone
from reidscale.utils.options import field_doc

timm = pytest.importorskip("timm")

ARCH_NAMES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _images(height: int = 256, width: int = 128, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry_module, "_BACKBONES", registry_module._BACKBONES.copy())


# ----------------------------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_reproduces_torchvision_with_its_weights(arch: str) -> None:
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    ours = create_backbone(arch, last_stride=2).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)  # same parameter and buffer names, nothing left over

    images = _images(128, 64)
    trunk = nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        expected_map = trunk(images)
        expected_pooled = torch.flatten(reference.avgpool(expected_map), 1)
        got_map = ours.forward_features(images)
        got_pooled = ours(images)
    assert got_map.shape == (2, ours.feature_dim, 4, 2)
    torch.testing.assert_close(got_map, expected_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_pooled, expected_pooled, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_resnet_parameter_count_is_torchvision_minus_fc(arch: str) -> None:
    with torch.device("meta"):
        reference = getattr(torchvision.models, arch)(weights=None)
        ours = create_backbone(arch)
    assert _num_params(ours) == _num_params(reference) - _num_params(reference.fc)
    assert ours.feature_dim == reference.fc.in_features
    assert not any(isinstance(m, nn.Linear) for m in ours.modules())  # no classifier


@pytest.mark.parametrize(("arch", "channels"), [("resnet18", 512), ("resnet50_ibn_a", 2048)])
def test_last_stride_sets_the_map_size(arch: str, channels: int) -> None:
    device = "cpu" if arch == "resnet18" else "meta"  # meta: shapes without the arithmetic
    images = _images(batch=1).to(device)
    with torch.no_grad(), torch.device(device):
        reid = create_backbone(arch, last_stride=1).eval()
        classic = create_backbone(arch, last_stride=2).eval()
        default = create_backbone(arch).eval()
        assert reid.forward_features(images).shape == (1, channels, 16, 8)
        assert classic.forward_features(images).shape == (1, channels, 8, 4)
        assert default.forward_features(images).shape == (1, channels, 16, 8)  # last_stride 1 by default
        assert reid(images).shape == (1, channels)


def test_resnet_initialisation_follows_kaiming_fan_out() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet50_ibn_a")
    for conv in (model.conv1, model.layer1[0].conv2, model.layer4[0].conv2):
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
    for norm in (model.bn1, model.layer1[0].bn1.IN, model.layer1[0].bn1.BN, model.layer4[2].bn3):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_resnet_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="last_stride"):
        create_backbone("resnet18", last_stride=3)
    with pytest.raises(ValueError, match="pooling"):
        create_backbone("resnet18", pooling="median")
    with pytest.raises(ValueError, match="img_size"):
        create_backbone("resnet18", img_size=(256,))
    with pytest.raises(ValueError, match="arch"):
        ResNet("resnet19")


# ----------------------------------------------------------------------------------------------- IBN-a


@pytest.mark.parametrize(("arch", "depths"), [("resnet18", (2, 2, 2)), ("resnet50", (3, 4, 6))])
def test_ibn_a_placement(arch: str, depths: tuple[int, int, int]) -> None:
    with torch.device("meta"):
        model = create_backbone(f"{arch}_ibn_a")
    instance_norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    expected = {
        f"layer{stage + 1}.{block}.bn1.IN" for stage, depth in enumerate(depths) for block in range(depth)
    }
    assert set(instance_norms) == expected  # first norm of every block of layer1-3, nowhere else
    for name, norm in instance_norms.items():
        stage = int(name.split(".")[0].removeprefix("layer"))
        width = (64, 128, 256)[stage - 1]
        assert norm.num_features == width // 2 and norm.affine
        assert model.get_submodule(name.removesuffix(".IN")).BN.num_features == width - width // 2
    assert not any(isinstance(m, (IBN, nn.InstanceNorm2d)) for m in model.layer4.modules())


def test_ibn_a_parameter_and_buffer_counts_by_hand() -> None:
    with torch.device("meta"):
        plain = create_backbone("resnet50")
        ibn = create_backbone("resnet50_ibn_a")
    # An IBN over C channels holds 2*(C/2) affine IN + 2*(C/2) affine BN parameters = 2*C, like a BN:
    assert _num_params(ibn) == _num_params(plain) == 23_508_032
    # but BN running statistics only for the C/2 BN channels: widths 64/128/256, blocks 3/4/6.
    halves = 3 * 32 + 4 * 64 + 6 * 128  # = 1120 channels moved from BN to IN
    stats = lambda m: sum(b.numel() for n, b in m.named_buffers() if "running" in n)  # noqa: E731
    assert stats(plain) - stats(ibn) == 2 * halves


def test_ibn_layer_matches_the_normalisation_formulas() -> None:
    torch.manual_seed(1)
    layer = IBN(6).train()
    for norm in (layer.IN, layer.BN):
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(4, 6, 5, 3) * 3 + 1
    eps = 1e-5
    first, rest = x[:, :3], x[:, 3:]
    mean_i, var_i = first.mean(dim=(2, 3), keepdim=True), first.var(dim=(2, 3), unbiased=False, keepdim=True)
    mean_b, var_b = (
        rest.mean(dim=(0, 2, 3), keepdim=True),
        rest.var(dim=(0, 2, 3), unbiased=False, keepdim=True),
    )
    expected = torch.cat(
        [
            (first - mean_i) / torch.sqrt(var_i + eps) * layer.IN.weight.view(1, -1, 1, 1)
            + layer.IN.bias.view(1, -1, 1, 1),
            (rest - mean_b) / torch.sqrt(var_b + eps) * layer.BN.weight.view(1, -1, 1, 1)
            + layer.BN.bias.view(1, -1, 1, 1),
        ],
        dim=1,
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- pooling


def test_gem_by_hand_and_limits() -> None:
    x = torch.tensor([1.0, 8.0]).view(1, 1, 1, 2)
    assert GeneralizedMeanPooling(p=3.0)(x).item() == pytest.approx(((1 + 512) / 2) ** (1 / 3), rel=1e-6)
    for p in (1.0, 3.0, 7.5):  # the p-mean of a constant is the constant
        pooled = GeneralizedMeanPooling(p=p)(torch.full((1, 3, 4, 2), 2.5))
        torch.testing.assert_close(pooled, torch.full((1, 3), 2.5))

    features = torch.rand(2, 5, 16, 8, generator=torch.Generator().manual_seed(0)) + 0.05
    torch.testing.assert_close(GeneralizedMeanPooling(p=1.0)(features), features.mean(dim=(2, 3)))
    peak = features.amax(dim=(2, 3))
    errors = []
    for p in (3.0, 16.0, 64.0, 512.0):
        gem = GeneralizedMeanPooling(p=p)(features).detach()
        # power-mean bounds: max * (1/N)^(1/p) <= GeM_p <= max, N = 16*8
        assert torch.all(gem <= peak * (1 + 1e-5))
        assert torch.all(gem >= peak * (1 / 128) ** (1 / p) * (1 - 1e-5))
        errors.append((peak - gem).abs().max().item())
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1.05 * (1 - (1 / 128) ** (1 / 512))  # ≈ 0.01: at p = 512 GeM is max pooling


def test_gem_exponent_is_learnable() -> None:
    gem = GeneralizedMeanPooling()
    assert gem.p.item() == 3.0 and gem.p.requires_grad
    gem(torch.rand(2, 4, 3, 3) + 0.1).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0
    assert not GeneralizedMeanPooling(learnable=False).p.requires_grad
    with pytest.raises(ValueError, match="p must be > 0"):
        GeneralizedMeanPooling(p=0.0)


def test_pooling_modes_in_a_backbone() -> None:
    images = _images(128, 64)
    torch.manual_seed(0)
    model = create_backbone("resnet18", pooling="max").eval()
    with torch.no_grad():
        feature_map = model.forward_features(images)
        torch.testing.assert_close(model(images), feature_map.amax(dim=(2, 3)))
        model.pool = build_pooling("gem", gem_p=4.0)
        expected = feature_map.clamp(min=1e-6).pow(4).mean(dim=(2, 3)).pow(0.25)
        torch.testing.assert_close(model(images), expected)
    assert isinstance(create_backbone("resnet18", pooling="gem", gem_p=2.5).pool, GeneralizedMeanPooling)


# ----------------------------------------------------------------------------------------------- timm


def test_vit_small_has_a_16_by_8_patch_grid_and_matches_timm() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("vit_small").eval()
    torch.manual_seed(0)
    reference = timm.create_model(
        "vit_small_patch16_224", pretrained=False, num_classes=0, img_size=(256, 128)
    ).eval()
    images = _images()
    with torch.no_grad():
        tokens = backbone.forward_features(images)
        pooled = backbone(images)
        expected = reference(images)
    assert backbone.feature_dim == reference.num_features == 384
    assert backbone.model.patch_embed.grid_size == (16, 8)
    assert tokens.shape == (2, 128 + backbone.model.num_prefix_tokens, 384)  # 128 patch tokens + class token
    assert pooled.shape == (2, 384)
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize(
    ("name", "timm_name", "dim"), [("resnet50_timm", "resnet50", 2048), ("timm:resnet18", "resnet18", 512)]
)
def test_timm_cnn_without_img_size_and_generic_prefix(name: str, timm_name: str, dim: int) -> None:
    images = _images(64, 32)
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        assert backbone.forward_features(images).shape == (2, dim, 2, 1)
        torch.testing.assert_close(backbone(images), reference(images))
    assert backbone.feature_dim == dim and backbone.img_size == (256, 128)


def test_vit_base_and_vit_tiny_shapes_on_meta() -> None:
    with torch.device("meta"):
        base, tiny = create_backbone("vit_base"), timm_backbone("vit_tiny_patch16_224", img_size=(384, 128))
    assert base.feature_dim == 768 and base.model.patch_embed.grid_size == (16, 8)
    assert base.model.pos_embed.shape == (1, 129, 768)
    assert tiny.feature_dim == 192 and tiny.model.patch_embed.grid_size == (24, 8)


def test_timm_feature_dim_follows_a_projecting_head(isolated_registry: None) -> None:
    register_timm_backbone("ghostnet_1_0", "ghostnet_100")  # a new family is one line
    backbone = create_backbone("ghostnet_1_0", img_size=(64, 32)).eval()
    with torch.no_grad():
        pooled = backbone(_images(64, 32))
    assert backbone.feature_dim == pooled.shape[1] == 1280 != backbone.model.num_features


def test_timm_arguments() -> None:
    vit = create_backbone("vit_small", pooling="avg", drop_path_rate=0.1)
    assert vit.model.global_pool == "avg"
    assert vit.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not a timm model"):
        create_backbone("timm:no_such_model")
    with pytest.raises(ValueError, match="pretrained"):
        timm_backbone("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="rejected the arguments"):
        create_backbone("timm:resnet18", bogus=1)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_names_and_errors(isolated_registry: None) -> None:
    names = list_backbones()
    for arch in ARCH_NAMES:
        assert arch in names and f"{arch}_ibn_a" in names
    assert {"vit_tiny", "vit_small", "vit_base", "resnet50_timm", "timm:*"} <= set(names)
    with pytest.raises(ValueError, match=r"unknown backbone name 'resnet51'.*resnet50_ibn_a"):
        create_backbone("resnet51")
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_backbone("resnet50", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet50")(lambda: None)
    with pytest.raises(ValueError, match="without ':'"):
        register_backbone("a:b")

    @register_backbone("tiny_test_net")
    def tiny(img_size: tuple[int, int] = (32, 16)) -> TimmBackbone:
        return timm_backbone("resnet18", img_size=img_size)

    assert "tiny_test_net" in list_backbones()
    assert isinstance(create_backbone("tiny_test_net"), TimmBackbone)


# ----------------------------------------------------------------------------------------------- config


def test_model_config_documents_every_field() -> None:
    for field in dataclasses.fields(ModelConfig):
        assert field_doc(field), field.name


def test_backbone_from_config() -> None:
    config = build_config(ModelConfig, {"name": "resnet18_ibn_a", "last_stride": 2, "pooling": "gem"})
    model = backbone_from_config(config)
    assert isinstance(model.pool, GeneralizedMeanPooling) and model.pool.p.item() == 3.0
    assert model.layer4[0].conv1.stride == (2, 2)  # basic blocks stride their first 3x3
    assert model.img_size == (256, 128)
    config = build_config(ModelConfig, {"name": "resnet18", "pooling": "gem", "gem_p": 4.5})
    assert backbone_from_config(config).pool.p.item() == 4.5

    default = backbone_from_config(ModelConfig())
    assert isinstance(default, ResNet) and default.feature_dim == 2048
    assert (
        default.layer4[0].conv2.stride == (1, 1) and sum(isinstance(m, IBN) for m in default.modules()) == 13
    )

    vit = backbone_from_config(ModelConfig(name="vit_small", drop_path_rate=0.1))
    assert vit.model.global_pool == "token"  # null pooling keeps timm's default
    with pytest.raises(ValueError, match=r"model\.img_size"):
        backbone_from_config(ModelConfig(name="resnet18", img_size=[256]))
    with pytest.raises(ValueError, match=r"model\.drop_path_rate"):
        backbone_from_config(ModelConfig(name="vit_small", drop_path_rate=1.5))
    with pytest.raises(ValueError, match="last_stride"):
        backbone_from_config(ModelConfig(name="vit_small", last_stride=1))


def test_resnet_ibn_gem_exports_to_onnx(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = create_backbone("resnet18_ibn_a", pooling="gem").eval()
    images = _images(64, 32)
    path = tmp_path / "backbone.onnx"
    torch.onnx.export(model, (images,), str(path), input_names=["images"], verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_out), model(images), rtol=1e-4, atol=1e-4)
