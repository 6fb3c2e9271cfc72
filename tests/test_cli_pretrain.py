"""``reidscale pretrain`` end to end on the tiny synthetic corpus (videos + tracklets → crop cache → SCL).

Two ranks (torchrun, gloo): a straight 6-step run (2 warm-up steps, then 4 steps with sharded selection)
against the same run stopped after 3 steps (``pretrain.until_step``) and resumed by a fresh launch: the
weights, both ranks' memory-bank shards and the final metrics must be identical. One rank: the outputs
(results.json with before/after, features, rank-list PNG, jsonl metrics) and the checks on bad settings.
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

from reidscale.data.synth import build_corpus

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[1]


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
                image_height: 64, image_width: 32, cache_dir: {tmp / "cache"}, decode_backend: pyav}}
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


def _run(args: list[str], timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
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
    assert "pre-trained resnet18 (selective) for 3 steps" in first.stdout
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
    stopped_at_3 = [entry for entry in split["results"]["evaluations"] if entry["step"] != 3]
    assert stopped_at_3 == straight["results"]["evaluations"]  # + the evaluation where the first part stopped
    # the two shards together hold every row once: 37 tracklets × 1 crop
    assert sum(shard["selection"].shape[0] for shard in straight["banks"]) == 37
    rows = [json.loads(line) for line in (tmp_path / "runs" / "straight" / "metrics.jsonl").open()]
    selected = [row for row in rows if "train/positive_precision" in row]
    assert [row["step"] for row in selected] == [3, 4, 5, 6]  # selection starts after the warm-up epoch


def test_single_rank_outputs(tmp_path: Path, corpus: Path) -> None:
    config = _config(tmp_path, corpus, "single", extra="")
    out = _run([sys.executable, "-m", "reidscale", "pretrain", "--config", str(config)]).stdout
    assert "pre-trained resnet18 (selective) for 6 steps" in out and "test-time camera term off" in out
    run_dir = tmp_path / "runs" / "single"
    results = json.loads((run_dir / "results.json").read_text())
    for phase in ("before", "after"):
        assert set(results[phase]) >= {"mAP", "R1", "mINP"}
        assert all(0.0 <= results[phase][key] <= 1.0 for key in ("mAP", "R1", "mINP"))
    assert results["protocol"] == {"camera_penalty": 0.0, "rerank": False}
    assert results["after"] != results["before"]
    features = torch.load(run_dir / "features.pt", weights_only=False)
    assert features["query_feats"].shape[1] == 32 + 4 * 8  # test_feature "concat" = [g | l_cat]
    assert (run_dir / "rank_list.png").stat().st_size > 1000


def test_pretrain_rejects_bad_settings(tmp_path: Path, corpus: Path) -> None:
    from reidscale.config import Config, load_config
    from reidscale.jobs.pretrain import derived_train_config

    config = load_config(Config, _config(tmp_path, corpus, "checks"), [])
    train = derived_train_config(config, 2, steps_per_epoch=5)
    assert (train.micro_batch, train.grad_accumulation, train.eval_every) == (8, 1, 0)
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        derived_train_config(config, 3, steps_per_epoch=5)
    config.model.img_size = [256, 128]
    with pytest.raises(ValueError, match=r"model.img_size \[256, 128\] must equal"):
        derived_train_config(config, 1, steps_per_epoch=5)
    config_path = tmp_path / "checks.yaml"
    command = [sys.executable, "-m", "reidscale", "pretrain", "--config", str(config_path)]
    proc = subprocess.run(
        [*command, "--scl.num_negatives=0"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "scl.num_negatives must be >= 1" in proc.stderr, proc.stderr
