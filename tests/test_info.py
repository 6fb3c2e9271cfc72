"""`reidscale info`: versions match the imported modules, and each backend/component states a reason."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from reidscale.info import backend_report, collect_info, format_info


@pytest.fixture(scope="module")
def report() -> dict:
    return collect_info()


def test_info_json_on_stdout_is_clean_and_complete() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "reidscale", "info", "--json"], capture_output=True, text=True, check=True
    ).stdout
    report = json.loads(out)  # fails if anything (e.g. an import banner) leaked onto stdout
    assert set(report) == {"versions", "gpus", "backends", "components"}
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
    assert backend_report(has_gpu=False)["triton"]["usable"] is False
    assert "TRITON_INTERPRET" in backend_report(has_gpu=False)["triton"]["detail"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_report(has_gpu=False)["triton"]["usable"] is True
    assert backend_report(has_gpu=True)["torch"]["usable"] is True


def test_cuda_backend_needs_extension_and_gpu() -> None:
    cuda = backend_report(has_gpu=torch.cuda.is_available())["cuda"]
    try:
        import reidscale._C  # noqa: F401

        built = True
    except ImportError:
        built = False
    assert cuda["usable"] is (built and torch.cuda.is_available())
    if not built:
        assert "not built" in cuda["detail"]


def test_text_format_lists_every_entry(report: dict) -> None:
    text = format_info(report)
    for section in ("backends", "components"):
        for name in report[section]:
            assert f"  {name}" in text
    assert ("none (CPU only)" in text) is (not report["gpus"])
