"""`reidscale demo` launches DeepSpeed on a free port unless --port names one (the launch itself is faked:
the real demo takes minutes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import reidscale.jobs.demo as demo
from reidscale.cli import main

LAUNCHER_MISSING = (
    shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
) is None


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """The commands the demo launches; each fake launch writes the results.json the demo reads back."""
    commands: list[list[str]] = []

    def fake_run(command: list[str], check: bool, env: dict) -> subprocess.CompletedProcess:
        commands.append(list(command))
        results = {"steps": 3, "before": {"mAP": 0.1, "R1": 0.2, "mINP": 0.05}, "after": {"mAP": 0.3}}
        (tmp_path / "out").mkdir(exist_ok=True)
        (tmp_path / "out" / "results.json").write_text(json.dumps(results), encoding="utf-8")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(demo, "build_demo_corpus", lambda data_dir: False)
    monkeypatch.setattr(demo, "pack_demo_corpus", lambda data_dir, shards_dir, overrides: "packed")
    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    return commands


def master_port(command: list[str]) -> int:
    return int(command[command.index("--master_port") + 1])


def demo_argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["demo", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "data"), *extra]


@pytest.mark.skipif(LAUNCHER_MISSING, reason="the deepspeed launcher is not installed")
def test_demo_launches_on_the_port_given(tmp_path: Path, launched: list[list[str]]) -> None:
    assert main(demo_argv(tmp_path, "--port", "34567")) == 0
    assert [master_port(command) for command in launched] == [34567]


@pytest.mark.skipif(LAUNCHER_MISSING, reason="the deepspeed launcher is not installed")
def test_demo_takes_a_free_port_by_default(
    tmp_path: Path, launched: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[int] = []
    real_free_port = demo.free_port

    def recording_free_port() -> int:
        chosen.append(real_free_port())
        return chosen[-1]

    monkeypatch.setattr(demo, "free_port", recording_free_port)
    assert main(demo_argv(tmp_path)) == 0
    assert len(chosen) == 1 and [master_port(command) for command in launched] == chosen


@pytest.mark.skipif(LAUNCHER_MISSING, reason="the deepspeed launcher is not installed")
def test_demo_trains_from_the_shards_beside_its_run_folder(tmp_path: Path, launched: list[list[str]]) -> None:
    assert main(demo_argv(tmp_path)) == 0
    (command,) = launched
    assert "--pretrain_data.source=shards" in command
    assert f"--pretrain_data.path={tmp_path / 'out_shards'}" in command


def test_the_demo_packs_its_corpus_at_the_input_size_once(tiny_corpus: Path, tmp_path: Path) -> None:
    from reidscale.data.manifests import load_manifest
    from reidscale.data.shards import CropShards

    shards_dir = tmp_path / "demo_shards"
    line = demo.pack_demo_corpus(tiny_corpus, shards_dir, ["--model.img_size", "[32, 16]"])
    records = load_manifest("video_tracklets", tiny_corpus).records
    shards = CropShards(shards_dir)
    assert line.startswith(f"packed {len(shards)} crops into {shards_dir}") and "per 32x16 JPEG" in line
    assert len(shards) + len(shards.skipped()) == len(records)
    assert shards.image(0).shape == (32, 16, 3)
    again = demo.pack_demo_corpus(tiny_corpus, shards_dir, ["--model.img_size", "[32, 16]"])
    assert again == f"reusing the crop shards in {shards_dir} ({len(shards)} crops)"


def test_demo_refuses_a_bad_port_before_building_anything(
    tmp_path: Path, launched: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(demo_argv(tmp_path, "--port", "70000")) == 2
    assert "port must be an integer TCP port in 1..65535, got 70000" in capsys.readouterr().err
    assert launched == []


def test_an_earlier_demo_run_is_replaced_and_anything_else_is_left(tmp_path: Path) -> None:
    from reidscale.jobs.demo import clear_earlier_demo_run

    earlier = tmp_path / "demo"
    earlier.mkdir()
    for name in ("pretrain.run.json", "results.json", "metrics.jsonl"):
        (earlier / name).write_text("{}")
    assert clear_earlier_demo_run(earlier) and not earlier.exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "results.json").write_text("{}")
    assert not clear_earlier_demo_run(other) and (other / "results.json").is_file()
    running = tmp_path / "running"
    running.mkdir()
    (running / "pretrain.run.json").write_text("{}")
    (running / ".reidscale.lock").write_text("{}")
    assert not clear_earlier_demo_run(running) and (running / "pretrain.run.json").is_file()
