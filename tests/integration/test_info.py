"""`reidscale info`: versions match the imported modules, and each backend/component states a reason."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from reidscale.info import collect_info, format_info
from reidscale.kernels import dispatch


@pytest.fixture(scope="module")
def report() -> dict:
    return collect_info()


def test_info_json_on_stdout_is_clean_and_complete() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reidscale", "info", "--json"], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)  # fails if anything (e.g. an import banner) leaked onto stdout
    assert set(report) == {"versions", "gpus", "backends", "kernels", "components"}
    assert torch.__version__.startswith(report["versions"]["torch"])
    assert len(report["gpus"]) == torch.cuda.device_count()
    for section in ("backends", "components"):
        for name, status in report[section].items():
            assert isinstance(status["usable"], bool), name
            assert status["detail"], f"{section}.{name} gives no reason"


@pytest.mark.parametrize("module,key", [("faiss", "faiss"), ("wandb", "wandb"), ("deepspeed", "deepspeed")])
def test_component_usable_iff_importable(module: str, key: str, report: dict) -> None:
    try:
        __import__(module)
        importable = True
    except Exception:
        importable = False
    assert report["components"][key]["usable"] is importable


def test_triton_backend_follows_gpu_and_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    dispatch.reset_backend_cache()
    triton = collect_info()["backends"]["triton"]
    assert triton["usable"] is torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET" in triton["detail"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    dispatch.reset_backend_cache()
    assert collect_info()["backends"]["triton"]["usable"] is True
    dispatch.reset_backend_cache()


def test_cuda_backend_needs_extension_and_gpu(report: dict) -> None:
    cuda = report["backends"]["cuda"]
    built = importlib.util.find_spec("reidscale._C") is not None
    if not torch.cuda.is_available():
        assert cuda["usable"] is False
        assert ("reidscale._C built" if built else "not built") in cuda["detail"]


def test_kernel_ops_report_the_backend_per_device(report: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = report["kernels"]
    assert kernels["requested"] == (os.environ.get("REIDSCALE_KERNELS", "").strip().lower() or "auto")
    assert set(kernels["ops"]) == {"bank_topk", "bank_contrastive_loss", "bank_update"}
    for choice in kernels["ops"].values():
        assert choice["cpu_tensors"] == "torch"
        assert (choice["cuda_tensors"] is None) is (not torch.cuda.is_available())
    text = format_info(report)
    assert "kernel ops (REIDSCALE_KERNELS=" in text and "bank_contrastive_loss" in text
    monkeypatch.setenv("REIDSCALE_KERNELS", "fastest")
    assert "REIDSCALE_KERNELS must be one of" in format_info(collect_info())


def test_text_format_lists_every_entry(report: dict) -> None:
    text = format_info(report)
    for section in ("backends", "components"):
        for name in report[section]:
            assert f"  {name}" in text
    assert ("none (CPU only)" in text) is (not report["gpus"])
