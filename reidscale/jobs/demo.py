"""``reidscale demo`` (``make demo``): the main job end to end on generated data, in a few minutes.

1. builds the ``demo`` synthetic corpus (videos + tracklets + a Market-format folder) unless it exists;
2. packs its tracklet boxes into JPEG crop shards (``reidscale pack``) at the run's input size, in
   ``<out>_shards`` beside the run folder, unless a complete pack of the same corpus is there;
3. launches ``reidscale pretrain --config configs/scl_demo.yaml`` reading those shards under the
   ``deepspeed`` launcher with 2 ranks (CPU, gloo) — or one rank per GPU, at most 2, when CUDA is
   available — rendezvousing on a free port (or ``--port``), which trains selective contrastive learning
   on the selected crops and evaluates the model on the held-out synthetic query/gallery before and after;
4. prints the before/after table (mAP, R1, mINP) from ``<out>/results.json``, the rank-list PNG and where
   the offline wandb run is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from reidscale.evaluation.evaluator import resolve_device
from reidscale.utils.ports import check_port, free_port

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "scl_demo.yaml"
#: fine-tuning at the demo's scale, from the backbone the demo writes (printed as the next step)
FINETUNE_CONFIG = Path("configs") / "finetune_demo.yaml"
#: the corpus folder ``reidscale demo`` uses unless ``--data`` says otherwise (the config's dataset_root)
DEMO_DATA = Path("data/synth_demo")
DEMO_METRICS: tuple[str, ...] = ("mAP", "R1", "mINP")


def demo_ranks() -> int:
    """2 ranks on the CPU; one per GPU (at most 2) when CUDA is available."""
    return min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 2


def build_demo_corpus(data_dir: Path, seed: int = 0) -> bool:
    """Build the ``demo`` corpus into ``data_dir`` unless a complete one is there; True when built."""
    from reidscale.data.synth import build_corpus

    if (data_dir / "corpus.json").is_file():
        return False
    build_corpus(data_dir, "demo", seed=seed, workers=min(2, os.cpu_count() or 1), overwrite=True)
    return True


def shards_folder(out_dir: Path) -> Path:
    """Where the demo packs its corpus: ``<out>_shards`` beside the run folder (the run folder itself is
    replaced by every demo; the pack is kept and reused)."""
    return out_dir.parent / f"{out_dir.name}_shards"


def pack_demo_corpus(data_dir: Path, shards_dir: Path, overrides: list[str]) -> str:
    """Pack the corpus's tracklet boxes into ``shards_dir`` at the input size of the demo's configuration
    (with ``overrides``), or finish / reuse a pack already there; returns the line the demo prints."""
    from reidscale.config import load_config
    from reidscale.data.manifests import load_manifest
    from reidscale.data.pretrain_set import resolve_decode_device
    from reidscale.data.shards.pack import PackSettings, pack_manifest
    from reidscale.jobs.roots import root_for

    config = load_config(root_for("pretrain"), DEMO_CONFIG, overrides)
    data = config.pretrain_data
    manifest = load_manifest("video_tracklets", data_dir, **data.manifest_options)
    settings = PackSettings(
        size=config.model.input_size,
        decode_backend=data.decode_backend,
        decode_device=resolve_decode_device(data.decode_device),
        num_threads=min(2, os.cpu_count() or 1),
    )
    source = {"kind": "video_tracklets", "path": str(data_dir.resolve())}
    report = pack_manifest(manifest, shards_dir, source, settings, log=lambda line: None)
    if not report.shards_written:
        return f"reusing the crop shards in {shards_dir} ({report.crops} crops)"
    return (
        f"packed {report.crops} crops into {shards_dir} ({report.bytes_per_crop / 1024:.1f} KiB per "
        f"{settings.size[0]}x{settings.size[1]} JPEG, {report.seconds:.0f} s)"
    )


def launch_command(ranks: int, config: Path, overrides: list[str], port: int) -> list[str]:
    """The ``deepspeed`` launcher command running ``reidscale pretrain`` on ``ranks`` local ranks."""
    launcher = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or shutil.which("deepspeed")
    if launcher is None:
        raise RuntimeError("the deepspeed launcher is not installed (pip install deepspeed)")
    return [
        launcher,
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(port),
        "--no_local_rank",
        "--module",
        "reidscale",
        "pretrain",
        "--config",
        str(config),
        *overrides,
    ]


def format_demo_table(results: dict) -> str:
    """The before/after table of results.json (percent)."""
    header = f"{'':<8}" + "".join(f"{name:>9}" for name in DEMO_METRICS)
    rows = [header]
    for label in ("before", "after"):
        metrics = results.get(label, {})
        rows.append(
            f"{label:<8}" + "".join(f"{100 * metrics.get(n, float('nan')):>9.2f}" for n in DEMO_METRICS)
        )
    return "\n".join(rows)


def wandb_run_dir(run_dir: Path) -> Path | None:
    """The newest offline wandb run folder under ``run_dir`` (None when wandb logged nothing)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"), key=lambda path: path.stat().st_mtime)
    return runs[-1] if runs else None


def clear_earlier_demo_run(out_dir: Path) -> bool:
    """Remove an earlier demo run from ``out_dir`` (a run folder holding ``pretrain.run.json``, the record
    every pre-training run writes) so that the demo starts afresh; True when one was removed. A folder with
    anything else in it is left alone (the run then refuses it, naming what is there)."""
    if not (out_dir / "pretrain.run.json").is_file() or (out_dir / ".reidscale.lock").exists():
        return False
    shutil.rmtree(out_dir)
    return True


def run_demo(out_dir: Path, data_dir: Path | None, overrides: list[str], port: int | None = None) -> dict:
    """Steps 1–4 of the module docstring (``data_dir`` None: ``data/synth_demo``); returns results.json's
    content. ``port``: the launcher's rendezvous port; None takes one free on this machine when launching,
    so two demos can run side by side."""
    data_dir = DEMO_DATA if data_dir is None else data_dir
    if port is not None:
        check_port(port, "port")
    started = time.monotonic()
    print(f"[demo] device: {resolve_device('auto')}, ranks: {demo_ranks()}")
    if build_demo_corpus(data_dir):
        print(f"[demo] built the synthetic corpus in {data_dir} ({time.monotonic() - started:.0f} s)")
    else:
        print(f"[demo] reusing the synthetic corpus in {data_dir}")
    if clear_earlier_demo_run(out_dir):
        print(f"[demo] replaced the earlier demo run in {out_dir}")
    shards_dir = shards_folder(out_dir)
    print(f"[demo] {pack_demo_corpus(data_dir, shards_dir, overrides)}")
    settings = [
        f"--run.output_dir={out_dir.parent}",
        f"--run.name={out_dir.name}",
        "--pretrain_data.source=shards",
        f"--pretrain_data.path={shards_dir}",
        f"--pretrain.eval_root={data_dir / 'market'}",
        *overrides,
    ]
    env = dict(os.environ)
    env.setdefault("WANDB_MODE", "offline")
    command = launch_command(demo_ranks(), DEMO_CONFIG, settings, free_port() if port is None else port)
    print("[demo] " + " ".join(command))
    subprocess.run(command, check=True, env=env)
    results = json.loads((out_dir / "results.json").read_text(encoding="utf-8"))
    print(f"\n[demo] selective contrastive pre-training, {results['steps']} steps, held-out synthetic split:")
    print(format_demo_table(results))
    print(f"[demo] results: {out_dir / 'results.json'}")
    if (out_dir / "rank_list.png").is_file():
        print(f"[demo] rank lists: {out_dir / 'rank_list.png'}")
    if (out_dir / "backbone.pt").is_file():
        finetune = f"reidscale finetune --config {FINETUNE_CONFIG} --model.weights {out_dir / 'backbone.pt'}"
        if data_dir != DEMO_DATA:
            finetune += f" --finetune.dataset_root {data_dir / 'market'}"
        print(f"[demo] pre-trained backbone: {out_dir / 'backbone.pt'} (fine-tune it: {finetune})")
    wandb_dir = wandb_run_dir(out_dir)
    if wandb_dir is not None:
        print(f"[demo] offline wandb run: {wandb_dir} (upload with: wandb sync {wandb_dir})")
    print(f"[demo] done in {time.monotonic() - started:.0f} s")
    return results
