"""Small YAML configs of the training commands for the CLI tests (resnet18 at 64×32, a few steps)."""

from __future__ import annotations

from pathlib import Path


def finetune_run_config(tmp: Path, market: Path, name: str, zero_stage: int = 0) -> Path:
    """``<tmp>/<name>.yaml``: 30 BoT steps on the Market-format folder ``market``, runs under ``tmp/runs``."""
    text = f"""
run: {{name: {name}, output_dir: {tmp / "runs"}, seed: 0}}
tracking: {{backends: [jsonl], progress: false}}
model: {{name: resnet18, img_size: [64, 32]}}
finetune: {{dataset: market1501, dataset_root: {market}, ids_per_batch: 4, images_per_id: 4,
           pad: 4}}
train: {{zero_stage: {zero_stage}, max_steps: 30, log_every: 10, optimizer: {{lr: 0.00035}},
        schedule: {{warmup_steps: 5}}}}
"""
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path
