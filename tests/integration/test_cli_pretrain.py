"""``reidscale pretrain`` end to end on the tiny synthetic corpus (videos + tracklets → crop cache → SCL).

Two ranks (torchrun, gloo): a straight 6-step run (2 warm-up steps, then 4 steps with sharded selection)
against the same run stopped after 3 steps (``pretrain.until_step``) and resumed by a fresh launch: the
weights, both ranks' memory-bank shards and the final metrics must be identical. One rank: the outputs
(results.json with before/after, features, rank-list PNG, jsonl metrics; backbone.pt / .safetensors /
heads.pt, which rebuild the test-feature model), the backbone reaching ``extract``, ``export``,
``finetune`` and continued pre-training through ``model.weights``, and the checks on bad settings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reidscale.config import load_config
from reidscale.data.synth import build_corpus
from reidscale.evaluation.config import EvalConfig
from reidscale.evaluation.during_training import split_metrics
from reidscale.jobs.roots import root_for
from reidscale.models import backbone_from_config, create_backbone
from reidscale.objectives.selective.heads import SelectiveFeatures, SelectiveNet
from tests.support.processes import run_command
from tests.support.run_configs import finetune_run_config

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[2]
SIZE = (64, 32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    build_corpus(root, "tiny", seed=0)
    return root


def _config(tmp: Path, corpus: Path, name: str, extra: str = "") -> Path:
    text = f"""
run: {{name: {name}, output_dir: {tmp / "runs"}, seed: 0}}
tracking: {{backends: [jsonl], progress: false}}
model: {{name: resnet18, img_size: [64, 32]}}
pretrain_data: {{source: video_tracklets, path: {corpus}, frame_stride: 4, max_per_tracklet: 1,
                cache_dir: {tmp / "cache"}, decode_backend: pyav}}
pretrain: {{batch_size: 16, eval_dataset: market1501, eval_root: {corpus / "market"}, eval_every_epochs: 0}}
scl: {{global_dim: 32, local_dim: 8, num_stripes: 4, num_positives: 3, num_negatives: 12, warmup_epochs: 1,
      init_batch_size: 16}}
train: {{zero_stage: 0, epochs: 3, log_every: 1, optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}},
        checkpoint: {{resume: auto}}}}
eval: {{num_visualize: 2}}
{extra}
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_command(args, env=env)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _two_ranks(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found beside the interpreter"
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "reidscale", "pretrain"]
    return _run([*command, "--config", str(config), *overrides])


def _final_state(run_dir: Path) -> dict:
    checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    shards = [torch.load(checkpoint / f"rank{r:05d}.pt", weights_only=False) for r in (0, 1)]
    return {
        "weights": torch.load(run_dir / "backbone.pt", weights_only=True),
        "banks": [shard["state"]["objective"]["banks"] for shard in shards],
        "results": json.loads((run_dir / "results.json").read_text()),
    }


@pytest.mark.multiproc
def test_two_rank_pretraining_resumes_exactly(tmp_path: Path, corpus: Path) -> None:
    straight_config = _config(tmp_path, corpus, "straight")
    _two_ranks(straight_config)
    split_config = _config(tmp_path, corpus, "split")
    first = _two_ranks(split_config, "--pretrain.until_step=3")
    assert "stopped by until_step after 3 steps" in first.stdout
    assert json.loads((tmp_path / "runs" / "split" / "results.json").read_text())["status"] == "stopped"
    assert not (tmp_path / "runs" / "split" / "backbone.pt").exists()  # no final weights from a part
    _two_ranks(split_config)

    straight, split = _final_state(tmp_path / "runs" / "straight"), _final_state(tmp_path / "runs" / "split")
    assert straight["results"]["steps"] == split["results"]["steps"] == 6
    for key, value in straight["weights"].items():
        assert torch.equal(split["weights"][key], value), key
    for rank in (0, 1):
        ours, theirs = split["banks"][rank], straight["banks"][rank]
        assert (ours["rank"], ours["world_size"]) == (rank, 2)
        for part in ("selection", "mixture"):
            assert torch.equal(ours[part], theirs[part]), f"rank {rank} {part}"
    assert split["results"]["after"] == straight["results"]["after"]
    assert split["results"]["before"] == straight["results"]["before"]  # carried over from the first part
    without_the_stop = [entry for entry in split["results"]["evaluations"] if entry["step"] != 3]
    assert (
        without_the_stop == straight["results"]["evaluations"]
    )  # + the evaluation where the first part stopped
    # the two shards together hold every row once: 37 tracklets × 1 crop
    assert sum(shard["selection"].shape[0] for shard in straight["banks"]) == 37
    rows = [json.loads(line) for line in (tmp_path / "runs" / "straight" / "metrics.jsonl").open()]
    selected = [row for row in rows if "train/positive_precision" in row]
    assert [row["step"] for row in selected] == [3, 4, 5, 6]  # selection starts after the warm-up epoch


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, str]:
    """One single-process pre-training run from random weights: (its config file, its stdout)."""
    config = _config(tmp_path_factory.mktemp("single"), corpus, "single", extra="")
    return config, _run([sys.executable, "-m", "reidscale", "pretrain", "--config", str(config)]).stdout


def test_single_rank_outputs(single_run: tuple[Path, str], corpus: Path) -> None:
    config_path, out = single_run
    assert "pre-trained resnet18 (selective) for 6 steps" in out and "test-time camera term off" in out
    run_dir = config_path.parent / "runs" / "single"
    results = json.loads((run_dir / "results.json").read_text())
    for phase in ("before", "after"):
        assert set(results[phase]) >= {"mAP", "R1", "mINP"}
        assert all(0.0 <= results[phase][key] <= 1.0 for key in ("mAP", "R1", "mINP"))
    assert results["protocol"] == {"camera_penalty": 0.0, "rerank": False}
    assert set(results["skipped"]) == {"reader", "decode"}  # the clean corpus: counts only, no list
    assert not (run_dir / "skipped.jsonl").exists()
    assert results["after"] != results["before"]
    features = torch.load(run_dir / "features.pt", weights_only=False)
    assert features["query_feats"].shape[1] == 32 + 4 * 8  # test_feature "concat" = [g | l_cat]
    assert (run_dir / "rank_list.png").stat().st_size > 1000
    for name in ("backbone.pt", "backbone.safetensors", "heads.pt"):
        assert f": {run_dir / name}" in out

    # backbone.pt is the plain backbone; the safetensors copy holds the same tensors
    backbone = create_backbone("resnet18", img_size=SIZE)
    state = torch.load(run_dir / "backbone.pt", weights_only=True)
    backbone.load_state_dict(state, strict=True)
    from safetensors.torch import load_file

    copy = load_file(str(run_dir / "backbone.safetensors"))
    assert set(copy) == set(state) and all(torch.equal(copy[key], value) for key, value in state.items())
    # backbone + heads rebuild the test-feature model whose features the run wrote
    config = load_config(root_for("pretrain"), config_path, [])
    net = SelectiveNet(backbone, config.scl)
    net.load_state_dict(
        {
            **{f"backbone.{k}": v for k, v in state.items()},
            **torch.load(run_dir / "heads.pt", weights_only=True),
        },
        strict=True,
    )
    _, rebuilt = split_metrics(
        SelectiveFeatures(net, config.scl.test_feature),
        "market1501",
        str(corpus / "market"),
        SIZE,
        config.pretrain.flip_test,
        EvalConfig(),
        torch.device("cpu"),
    )
    torch.testing.assert_close(rebuilt.query_feats, features["query_feats"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rebuilt.gallery_feats, features["gallery_feats"], rtol=1e-4, atol=1e-5)


def test_pretrained_backbone_reaches_extract_export_finetune_and_pretrain(
    single_run: tuple[Path, str], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reidscale.cli import main

    pretrain_config, _ = single_run
    weights = pretrain_config.parent / "runs" / "single" / "backbone.pt"
    market = corpus / "market"
    config = finetune_run_config(
        tmp_path, market, "from_pretrain"
    )  # resnet18 at 64×32 on the synthetic market
    backbone = create_backbone("resnet18", img_size=SIZE)
    backbone.load_state_dict(torch.load(weights, weights_only=True))
    expected, expected_features = split_metrics(
        backbone, "market1501", str(market), SIZE, False, EvalConfig(), torch.device("cpu")
    )

    # extract and export, in this process: --weights or --model.weights, and one of them is needed
    features = tmp_path / "extracted.pt"
    assert (
        main(["extract", "--config", str(config), "--weights", str(weights), "--output", str(features)]) == 0
    )
    extracted = torch.load(features, weights_only=False)
    torch.testing.assert_close(extracted["query_feats"], expected_features.query_feats, rtol=1e-5, atol=1e-6)
    exported = tmp_path / "export"
    command = ["export", "--config", str(config), "--model.weights", str(weights), "--export.onnx", "false"]
    assert main([*command, "--out", str(exported)]) == 0
    written = torch.load(exported / "backbone.pt", weights_only=True)
    assert all(torch.equal(written[key], value) for key, value in backbone.state_dict().items())
    capsys.readouterr()
    assert main(["extract", "--config", str(config), "--output", str(tmp_path / "none.pt")]) == 2
    assert (
        "extract needs trained weights: pass --weights FILE or set model.weights" in capsys.readouterr().err
    )

    # finetune starts from the file: its untrained evaluation is that of the loaded backbone
    _run(
        [
            sys.executable,
            "-m",
            "reidscale",
            "finetune",
            "--config",
            str(config),
            "--model.weights",
            str(weights),
            "--train.max_steps",
            "2",
        ]
    )
    run_dir = tmp_path / "runs" / "from_pretrain"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["before"] == pytest.approx(expected, abs=1e-9)
    torch.manual_seed(0)  # run.seed: what the run would have evaluated had it ignored the file
    untrained, _ = split_metrics(
        create_backbone("resnet18", img_size=SIZE),
        "market1501",
        str(market),
        SIZE,
        False,
        EvalConfig(),
        torch.device("cpu"),
    )
    assert untrained != expected
    assert (run_dir / "backbone.safetensors").is_file()

    # continued pre-training: backbone from the file, heads fresh (drawn as in a run from random weights)
    _run(
        [
            sys.executable,
            "-m",
            "reidscale",
            "pretrain",
            "--config",
            str(pretrain_config),
            "--run.name",
            "continued",
            "--model.weights",
            str(weights),
            "--pretrain.until_step",
            "1",
        ]
    )
    scratch = json.loads((pretrain_config.parent / "runs" / "single" / "results.json").read_text())
    continued = json.loads((pretrain_config.parent / "runs" / "continued" / "results.json").read_text())
    settings = load_config(root_for("pretrain"), pretrain_config, ["--model.weights", str(weights)])
    torch.manual_seed(settings.run.seed)
    net = SelectiveNet(backbone_from_config(settings.model), settings.scl)
    continued_expected, _ = split_metrics(
        SelectiveFeatures(net, settings.scl.test_feature),
        "market1501",
        str(market),
        SIZE,
        settings.pretrain.flip_test,
        settings.eval,
        torch.device("cpu"),
    )
    assert continued["before"] == pytest.approx(continued_expected, abs=1e-9)
    assert continued["before"] != scratch["before"]


def test_pretrain_rejects_bad_settings(tmp_path: Path, corpus: Path) -> None:
    from reidscale.jobs.train import train_settings
    from reidscale.methods import method_spec

    config = load_config(root_for("pretrain"), _config(tmp_path, corpus, "checks"), [])
    spec = method_spec("pretrain", config.pretrain.method)
    train = train_settings(spec, config, 2, batches_per_epoch=5)
    assert (train.micro_batch, train.grad_accumulation, train.eval_every) == (8, 1, 0)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        train_settings(spec, config, 3, batches_per_epoch=5)
    config.train.micro_batch = 4
    with pytest.raises(
        ValueError, match=r"train.micro_batch is set to 4, but pretrain derives it \(from pretrain"
    ):
        train_settings(spec, config, 1, batches_per_epoch=5)
    config_path = tmp_path / "checks.yaml"
    command = [sys.executable, "-m", "reidscale", "pretrain", "--config", str(config_path)]
    proc = run_command([*command, "--scl.num_negatives=0"])
    assert proc.returncode == 2 and "scl.num_negatives must be >= 1" in proc.stderr, proc.stderr


def test_pretrain_without_evaluation_or_cameras_prints_no_empty_lines(tmp_path: Path) -> None:
    """Evaluation off (pretrain.eval_dataset null): no evaluation lines at all; crops without camera ids
    (a LUPerson-NL folder): rank 0 says once that same-camera exclusion is off."""
    from PIL import Image

    folder = tmp_path / "luperson"
    generator = torch.Generator().manual_seed(0)
    for video in range(2):
        (folder / f"video{video}").mkdir(parents=True)
        for pid in range(10):
            for frame in range(2):
                pixels = torch.randint(0, 256, (64, 32, 3), generator=generator, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"video{video}" / f"{pid}_{frame}_0.jpg")
    config = _config(tmp_path, folder, "no_eval")
    proc = _run(
        [
            *(sys.executable, "-m", "reidscale", "pretrain", "--config", str(config)),
            "--pretrain_data.source=luperson_nl",
            "--pretrain_data.frame_stride=1",
            "--pretrain_data.max_per_tracklet=2",
            "--pretrain.eval_dataset=null",
            "--train.epochs=1",
        ]
    )
    lines = proc.stdout.splitlines()
    assert "" not in [line.strip() for line in lines], proc.stdout
    assert not any("mAP" in line or "test-time camera term" in line for line in lines), proc.stdout
    camera_lines = [line for line in lines if line.startswith("cameras:")]
    assert camera_lines == [
        "cameras: every training image has camera id -1 (unknown): same-camera exclusion is off "
        "(scl.cam_penalty=0.04 adds the same to every row)"
    ]
    results = json.loads((tmp_path / "runs" / "no_eval" / "results.json").read_text())
    assert (results["before"], results["after"], results["evaluations"]) == ({}, {}, [])


def test_pretraining_reads_a_packed_shard_set(tmp_path: Path, corpus: Path) -> None:
    """``reidscale pack`` then ``pretrain`` with ``pretrain_data.source: shards``: the run completes and
    reports the pack's skip counts; no crop cache is built."""
    shards = tmp_path / "shards"
    pack = [sys.executable, "-m", "reidscale", "pack", "--manifest", "video_tracklets", str(corpus)]
    packed = _run([*pack, "--out", str(shards), "--size", "64", "32", "--decode-backend", "pyav"])
    assert f"packed 1203 records into {shards}: 1203 crops, skipped none;" in packed.stdout
    config = _config(tmp_path, corpus, "from_shards")
    overrides = ["--pretrain_data.source=shards", f"--pretrain_data.path={shards}", "--train.epochs=1"]
    out = _run([sys.executable, "-m", "reidscale", "pretrain", "--config", str(config), *overrides]).stdout
    assert f"pretrain set: shards at {shards}: 1203 crops of 1203 records" in out
    results = json.loads((tmp_path / "runs" / "from_shards" / "results.json").read_text())
    assert results["status"] == "completed" and results["skipped"] == {"pack": {}}
    assert set(results["after"]) >= {"mAP", "R1", "mINP"}
    assert not (tmp_path / "cache").exists()
