"""Faults a user meets, each run as a user would: the CLI on the CPU with a tiny Market-format folder.

The scenarios and the outcome each test holds the project to:

- **crafted pickle on resume**: a checkpoint's rank file replaced by a pickle that would create a marker
  file. The resume is refused (exit 2) because the folder no longer matches its manifest; with a manifest
  rewritten to match, the rank file is still read without unpickling code and refused. The marker never
  appears. A resume with another backbone than the one saved is refused in one message naming the
  checkpoint and the mismatch (exit 2, no traceback).
- **SIGTERM at a random step**: the run stops at the next step boundary with a checkpoint, exits 128 + 15,
  ``results.json`` says ``stopped`` and no ``backbone.pt`` is written; resuming ends with exactly the
  metrics and weights of an uninterrupted run.
- **two runs into one folder**: while the first holds the folder, a second fails (exit 2) naming the holder
  (host, pid) and writes nothing there; the first finishes with one metrics stream; a fresh run into the
  finished folder is refused with the option to use.
- **bad input**: missing data and evaluation folders, weights of another backbone and a run folder under a
  file are reported together (exit 2) before any data is read or folder created; ``config --resolved``
  refuses ``train.zero_stage`` 7; corrupt or foreign ``model.weights`` end in one line without a traceback.
- **a manifest entry leaving its corpus** (``../../etc/passwd`` in a CION JSON list): refused naming the
  entry (strict); with ``strict: false`` the run completes, counts it in ``results.json`` and names it in
  ``skipped.jsonl``.

A failed ``evaluate`` leaving earlier results byte-identical is run in ``test_cli_evaluate.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from reidscale.engine.checkpoint import write_manifest
from tests.support.processes import HANG_GUARD_S, reidscale_cli, run_command
from tests.support.run_configs import finetune_run_config

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        reidscale_cli(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(event: Callable[[], bool], process: subprocess.Popen, what: str) -> None:
    """Wait until ``event()`` holds; fail when ``process`` exits first (only a hang guard limits it)."""
    guard = time.monotonic() + HANG_GUARD_S
    while not event():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < guard, f"{what} did not happen"
        time.sleep(0.05)


def _logged_a_step(metrics: Path) -> bool:
    return metrics.is_file() and '"train/loss"' in metrics.read_text(encoding="utf-8")


def _error_lines(stderr: str) -> list[str]:
    """The lines of the CLI's error message (from ``reidscale <command>: error:`` on)."""
    lines = stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if ": error: " in line)
    return lines[first:]


# ------------------------------------------------------------------------------ two runs, one folder
@dataclass
class Contest:
    """A finished fine-tuning run (checkpoints every 10 steps) and what a second run into its folder got
    while the first held it."""

    config: Path
    run_dir: Path
    first_pid: int
    first_code: int
    first_err: str
    second: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def contest(tmp_path_factory: pytest.TempPathFactory, tiny_market: Path) -> Contest:
    tmp = tmp_path_factory.mktemp("contest")
    config = finetune_run_config(tmp, tiny_market, "first")
    run_dir = tmp / "runs" / "first"
    first = _start("finetune", "--config", str(config), "--train.checkpoint.every", "10")
    try:
        _wait_for(lambda: _logged_a_step(run_dir / "metrics.jsonl"), first, "a logged step")
        first.send_signal(signal.SIGSTOP)  # holds the folder for as long as the second run needs
        try:
            second = run_command(reidscale_cli("finetune", "--config", str(config)), env=ENV)
        finally:
            first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=HANG_GUARD_S)
    finally:
        if first.poll() is None:
            first.kill()
    return Contest(config, run_dir, first.pid, first.returncode, err, second)


def test_a_second_run_into_a_held_folder_fails_naming_the_holder(contest: Contest) -> None:
    assert contest.second.returncode == 2, contest.second.stderr[-3000:]
    assert f"another run is writing into {contest.run_dir} (host {socket.gethostname()}, pid " in (
        contest.second.stderr
    )
    assert f", pid {contest.first_pid}, started " in contest.second.stderr
    assert contest.first_code == 0, contest.first_err[-3000:]
    results = json.loads((contest.run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["steps"] == 30
    rows = [json.loads(line) for line in (contest.run_dir / "metrics.jsonl").open()]
    assert [row["step"] for row in rows if "train/loss" in row] == [10, 20, 30]  # one run's stream
    assert not (contest.run_dir / ".reidscale.lock").exists()  # released on exit


def test_a_fresh_run_into_a_finished_folder_is_refused_with_the_option(contest: Contest) -> None:
    before = sorted(path.name for path in contest.run_dir.iterdir())
    proc = run_command(reidscale_cli("finetune", "--config", str(contest.config)), env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert _error_lines(proc.stderr) == [
        f"reidscale finetune: error: {contest.run_dir} holds a finished run (results.json, metrics.jsonl, "
        "checkpoints/); choose another run.name, or set train.checkpoint.resume=auto to continue it"
    ]
    assert sorted(path.name for path in contest.run_dir.iterdir()) == before  # nothing written, no lock


# ------------------------------------------------------------------------------ crafted pickle
class _WouldRunCode:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_on_resume_runs_nothing(contest: Contest, tmp_path: Path) -> None:
    crafted = tmp_path / "step_00000010"
    shutil.copytree(contest.run_dir / "checkpoints" / "step_00000010", crafted)
    marker = tmp_path / "code_ran"
    rank_file = crafted / "rank00000.pt"
    rank_file.write_bytes(pickle.dumps({"rng": _WouldRunCode(marker)}, protocol=2))
    resume = ["finetune", "--config", str(contest.config), "--run.name", "crafted"]
    proc = run_command(reidscale_cli(*resume, "--train.checkpoint.resume", str(crafted)), env=ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"refusing to resume from {crafted}: its files are not the ones saved there" in proc.stderr
    assert "rank00000.pt" in proc.stderr and "Traceback" not in proc.stderr
    saved_model = json.loads((crafted / "manifest.json").read_text())["model"]
    write_manifest(crafted, saved_model)  # the folder matches its manifest again: the rank file is refused
    proc = run_command(reidscale_cli(*resume, "--train.checkpoint.resume", str(crafted)), env=ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{rank_file} is not a reidscale rank-state file" in proc.stderr
    assert not marker.exists()


def test_resuming_with_another_backbone_ends_in_one_clear_error(contest: Contest) -> None:
    checkpoint = contest.run_dir / "checkpoints" / "step_00000010"
    resume = ["--run.name", "other", "--train.checkpoint.resume", str(checkpoint)]
    proc = run_command(
        reidscale_cli("finetune", "--config", str(contest.config), "--model.name", "resnet34", *resume),
        env=ENV,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert lines[0].startswith(
        f"reidscale finetune: error: refusing to resume from {checkpoint}: the model saved there is not the "
        "one this run builds"
    )
    # resnet34 has 8 more BasicBlocks than resnet18, 12 entries each, of which the 2 BatchNorm step counters
    # are not weights (not listed): 8 × 10 missing; the BoT heads are the same
    counts = "(80 missing, 0 unexpected, 0 of another shape; the checkpoint has 126 entries, this run's model"
    assert counts in lines[0]
    assert lines[1].startswith("  missing (80): backbone.layer1.2.conv1.weight, ")


# ------------------------------------------------------------------------------ SIGTERM
def test_sigterm_at_a_random_step_stops_with_a_checkpoint_and_resuming_ends_as_an_uninterrupted_run(
    contest: Contest, tmp_path: Path, tiny_market: Path
) -> None:
    config = finetune_run_config(tmp_path, tiny_market, "stopped")
    run_dir = tmp_path / "runs" / "stopped"
    delay = random.Random().uniform(0.0, 1.5)  # after the first logged step: the step stopped at varies
    process = _start("finetune", "--config", str(config))
    try:
        _wait_for(lambda: _logged_a_step(run_dir / "metrics.jsonl"), process, "a logged step")
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=HANG_GUARD_S)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode == 0:  # the run ended before the signal arrived: nothing to resume
        pytest.skip(f"the run finished within {delay:.2f} s of its first logged step")
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM after" in out
    stopped = json.loads((run_dir / "results.json").read_text())
    assert stopped["status"] == "stopped" and stopped["stopped_by"] == "SIGTERM", stopped
    assert 10 <= stopped["steps"] < stopped["total_steps"] == 30 and Path(stopped["checkpoint"]).is_dir()
    assert not (run_dir / "backbone.pt").exists()  # no final weights under the final name

    resumed = run_command(
        reidscale_cli("finetune", "--config", str(config), "--train.checkpoint.resume", "auto"), env=ENV
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = json.loads((run_dir / "results.json").read_text())
    reference = json.loads((contest.run_dir / "results.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 30
    assert final["before"] == reference["before"] and final["after"] == reference["after"]
    ours = torch.load(run_dir / "backbone.pt", weights_only=True)
    theirs = torch.load(contest.run_dir / "backbone.pt", weights_only=True)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in theirs)


# ------------------------------------------------------------------------------ bad input
def _pretrain_config(
    tmp: Path, data: Path, source: str, eval_root: Path | None, weights: str = "null"
) -> Path:
    """A one-epoch SCL pre-training config (resnet18 at 64×32) reading ``data`` as ``source``."""
    evaluation = f"eval_dataset: market1501, eval_root: {eval_root}" if eval_root else "eval_dataset: null"
    text = f"""
run: {{name: pre, output_dir: {tmp / "runs"}, seed: 0}}
tracking: {{backends: [jsonl], progress: false}}
model: {{name: resnet18, img_size: [64, 32], weights: {weights}}}
pretrain_data: {{source: {source}, path: {data}, frame_stride: 1, max_per_tracklet: 0,
                cache_dir: {tmp / "cache"}, decode_backend: pyav}}
pretrain: {{batch_size: 16, {evaluation}}}
scl: {{global_dim: 32, local_dim: 8, num_stripes: 4, num_positives: 3, num_negatives: 12, warmup_epochs: 0,
      init_batch_size: 16}}
train: {{zero_stage: 0, epochs: 1, log_every: 1, optimizer: {{name: sgd, lr: 0.01, momentum: 0.9}}}}
"""
    path = tmp / "pre.yaml"
    path.write_text(text)
    return path


def test_bad_inputs_are_reported_together_before_any_work(tmp_path: Path) -> None:
    from reidscale.models import create_backbone

    weights = tmp_path / "resnet34.pt"
    torch.save(create_backbone("resnet34").state_dict(), weights)
    (tmp_path / "a_file").write_text("not a folder")
    config = _pretrain_config(
        tmp_path, tmp_path / "no_corpus", "video_tracklets", tmp_path / "no_market", str(weights)
    )
    proc = run_command(
        reidscale_cli(
            "pretrain", "--config", str(config), "--run.output_dir", str(tmp_path / "a_file" / "runs")
        )
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = _error_lines(proc.stderr)
    assert lines[0] == "reidscale pretrain: error: pretrain cannot start, 4 problems in the config:"
    assert lines[1] == f"  - pretrain_data.path does not exist: {tmp_path / 'no_corpus'}"
    assert lines[2].startswith(f"  - pretrain.eval_root is not a folder: {tmp_path / 'no_market'}")
    assert lines[3].startswith(f"  - model.weights: {weights}: the weights do not fit backbone 'resnet18'")
    run_folder_line = next(line for line in lines if line.startswith("  - run.output_dir/run.name"))
    assert f"{tmp_path / 'a_file'} is not a folder" in run_folder_line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file", "pre.yaml", "resnet34.pt"]

    proc = run_command(reidscale_cli("config", "pretrain", "--resolved", "--train.zero_stage", "7"))
    assert proc.returncode == 2
    assert _error_lines(proc.stderr) == [
        "reidscale config: error: train.zero_stage must be 0, 1, 2 or 3, got 7"
    ]


@pytest.mark.parametrize("damage", ["truncated", "resnet34"])
def test_corrupt_or_foreign_weights_end_in_one_line(tmp_path: Path, tiny_market: Path, damage: str) -> None:
    from reidscale.models import create_backbone

    weights = tmp_path / f"{damage}.pt"
    torch.save(create_backbone("resnet34" if damage == "resnet34" else "resnet18").state_dict(), weights)
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    config = finetune_run_config(tmp_path, tiny_market, damage)
    proc = run_command(reidscale_cli("finetune", "--config", str(config), "--model.weights", str(weights)))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    mismatch = {
        "truncated": "not a readable PyTorch weights file",
        "resnet34": "the weights do not fit backbone 'resnet18' (0 missing, ",
    }[damage]
    first, second = _error_lines(proc.stderr)[:2]
    assert first == "reidscale finetune: error: finetune cannot start, 1 problem in the config:"
    assert second.startswith(f"  - model.weights: {weights}: {mismatch}"), proc.stderr
    assert not (tmp_path / "runs").exists()  # refused before the run folder was created


# ------------------------------------------------------------------------------ path escape
def test_a_manifest_entry_leaving_its_corpus(tmp_path: Path, tiny_market: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_market / "bounding_box_train", corpus / "images")
    images = sorted((corpus / "images").glob("*.png"))
    entries = [{"file_path": f"images/{path.name}", "id": int(path.name[:4])} for path in images]
    escape = "../../../../../../etc/passwd"
    entries.insert(5, {"file_path": escape, "id": 1})
    listing = corpus / "cion_list.json"  # its folder is the corpus root
    listing.write_text(json.dumps(entries))
    config = _pretrain_config(tmp_path, listing, "cion_json", None)
    proc = run_command(reidscale_cli("pretrain", "--config", str(config)), env=ENV)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{listing}: entry 5 key 'file_path': file path {escape!r} leaves the corpus root {corpus}" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr

    proc = run_command(
        reidscale_cli(
            "pretrain", "--config", str(config), "--pretrain_data.manifest_options", "{strict: false}"
        ),
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "pre"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["skipped"]["reader"] == {"path_outside": 1}
    skipped = [json.loads(line) for line in (run_dir / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"stage": "reader", "file": str(listing), "record": 5, "reason": "path_outside"}]
