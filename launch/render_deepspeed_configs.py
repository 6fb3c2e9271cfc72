"""Render the DeepSpeed JSON that ``reidscale finetune`` hands to ``deepspeed.initialize``, for reading.

The JSON is derived from the typed config (``train.*`` plus the PK batch of ``finetune.*``); reidscale
never reads a hand-written DeepSpeed file. The examples ``launch/ds_zero{0,1,2,3}.json`` are this script's
output for ``configs/finetune.yaml`` on 16 ranks (2 nodes × 8 GPUs):

    python launch/render_deepspeed_configs.py --config configs/finetune.yaml --world-size 16 --out launch
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from reidscale.config import load_config
from reidscale.engine.deepspeed_config import write_deepspeed_config
from reidscale.jobs.roots import root_for
from reidscale.jobs.train import train_settings
from reidscale.methods import method_spec


def render(
    config_file: Path, world_size: int, out_dir: Path, stages: tuple[int, ...] = (0, 1, 2, 3)
) -> list[Path]:
    """Write ``ds_zero<stage>.json`` per ZeRO stage into ``out_dir``; returns the paths."""
    config = load_config(root_for("finetune"), config_file, [])
    train = train_settings(method_spec("finetune", config.finetune.method), config, world_size, 1)
    return [
        write_deepspeed_config(
            dataclasses.replace(train, zero_stage=stage), world_size, out_dir / f"ds_zero{stage}.json"
        )
        for stage in stages
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/finetune.yaml"))
    parser.add_argument("--world-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("launch"))
    args = parser.parse_args()
    for path in render(args.config, args.world_size, args.out):
        print(path)


if __name__ == "__main__":
    main()
