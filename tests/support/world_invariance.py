"""Driver of the world-size invariance test: the same global batch on 1 rank and on 2 ranks.

``python tests/support/world_invariance.py OUT`` (1 process) and ``deepspeed --num_gpus 2
tests/support/world_invariance.py OUT`` (2 CPU ranks, gloo) train the BatchNorm toy at ZeRO 0-3 with global
batch 16 and micro-batch 4: one rank accumulates 4 micro-batches per step, two ranks 2 each. The micro-batch
is the BatchNorm group, so the arithmetic is the same and so must be the loss curve and the weights. Each
rank writes ``<stage>_world<W>_rank<R>.pt`` with its per-step losses and the final weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from tests.support.engine_toy import IN_DIM, ZERO_STEPS, ToyObjective, full_state, rank_batches, zero_config

STAGES = (0, 1, 2, 3)


class BatchNormToy(ToyObjective):
    """The engine toy with BatchNorm1d (batch statistics per micro-batch) instead of LayerNorm.

    The Linear before the BatchNorm has no bias, as in every conv-BN backbone: BatchNorm removes it, so its
    gradient is rounding noise that AdamW would normalise into full-size, world-size-dependent steps.
    """

    def __init__(self) -> None:
        super().__init__()
        hidden = self.net[0].out_features
        self.net[0] = nn.Linear(IN_DIM, hidden, bias=False)
        self.net[1] = nn.BatchNorm1d(hidden)


def main(out: Path) -> None:
    from reidscale.engine.distributed import distributed
    from reidscale.engine.trainer import Trainer

    out.mkdir(parents=True, exist_ok=True)
    with distributed():
        for stage in STAGES:
            torch.manual_seed(0)
            objective = BatchNormToy()
            config = zero_config(stage, "adamw", "global_norm", out, f"z{stage}")
            trainer = Trainer(objective, config, out / f"z{stage}")
            data = rank_batches(trainer.rank, trainer.world_size, trainer.accumulation, ZERO_STEPS)
            result = trainer.run(data)
            name = f"z{stage}_world{trainer.world_size}_rank{trainer.rank}.pt"
            torch.save({"losses": result.losses, "weights": full_state(objective.net)}, out / name)


if __name__ == "__main__":
    main(Path(next(arg for arg in sys.argv[1:] if not arg.startswith("--local_rank"))))
