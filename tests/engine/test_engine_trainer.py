"""The Trainer in this process (world size 1, gloo): gradient clipping through DeepSpeed against hand
numbers, tracker output (throughput, schedules, loss parts, eval), epochs, per-step data."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from reidscale.engine.config import CheckpointConfig, ClipConfig, OptimizerConfig, TrainConfig
from reidscale.engine.trainer import Trainer
from reidscale.objectives.base import Objective, StepOutput
from reidscale.tracking import JsonlTracker, read_jsonl_history
from reidscale.tracking.base import NullTracker

pytestmark = pytest.mark.deepspeed


@pytest.fixture(scope="module")
def single_rank() -> Iterator[None]:
    """One gloo group of world size 1 for the whole module (DeepSpeed keeps the first group it sees)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        torch_dist.init_process_group("gloo", rank=0, world_size=1)
        try:
            yield
        finally:
            torch_dist.destroy_process_group()


class LinearLoss(Objective):
    """loss = a·p1 + b·p2 (gradients a and b, given by the batch); parts name each term."""

    def __init__(self) -> None:
        super().__init__()
        self.p1 = nn.Parameter(torch.zeros(2))
        self.p2 = nn.Parameter(torch.zeros(2))

    def forward(self, batch: dict[str, torch.Tensor]) -> StepOutput:
        first, second = (self.p1 * batch["a"]).sum(), (self.p2 * batch["b"]).sum()
        return StepOutput(first + second, {"first": first, "second": second}, num_images=4)

    def feature_model(self) -> nn.Module:
        return self


def _config(tmp_path, clip: str, **changes) -> TrainConfig:
    return TrainConfig(
        micro_batch=4,
        optimizer=OptimizerConfig(name="sgd", lr=1.0, weight_decay=0.0, momentum=0.0),
        clip=ClipConfig(mode=clip, value=1.0),
        checkpoint=CheckpointConfig(dir=str(tmp_path / "ckpt")),
        **{"max_steps": 1, **changes},
    )


BATCH = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 12.0])}  # norms 5 and 12, together 13


@pytest.mark.parametrize(
    ("clip", "p1", "p2"),
    [
        ("none", [-3.0, -4.0], [0.0, -12.0]),
        ("global_norm", [-3 / 13, -4 / 13], [0.0, -12 / 13]),  # one factor 1/13 for all
        ("per_param", [-0.6, -0.8], [0.0, -1.0]),  # each tensor to norm 1
    ],
)
def test_clipping_through_deepspeed_hand_values(
    single_rank: None, tmp_path, clip: str, p1: list, p2: list
) -> None:
    objective = LinearLoss()
    Trainer(objective, _config(tmp_path, clip), tmp_path).run([BATCH])
    torch.testing.assert_close(objective.p1.detach(), torch.tensor(p1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(objective.p2.detach(), torch.tensor(p2), atol=1e-5, rtol=1e-5)


def test_epochs_tracking_and_eval(single_rank: None, tmp_path) -> None:
    objective = LinearLoss()
    calls: list[int] = []

    def evaluate(model: Objective, step: int) -> dict[str, float]:
        calls.append(step)
        return {"mAP": 0.5}

    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    config = _config(
        tmp_path, "none", max_steps=None, epochs=2, grad_accumulation=2, log_every=1, eval_every=2
    )
    config.checkpoint.every = 2  # saves at steps 2 and 4, and step 4 once more at the end
    with tracker:
        result = Trainer(objective, config, tmp_path, tracker=tracker, evaluator=evaluate).run([BATCH] * 5)
    assert result.steps_done == 4 and calls == [2, 4]  # 5 // 2 = 2 steps per epoch; the odd batch is dropped
    # each step: two micro-batches with the same gradient (a, b), averaged; cosine lr 1 → 0 over 4 steps:
    # 1 + (1 + √½)/2 + 1/2 + (1 - √½)/2 = 2.5
    torch.testing.assert_close(objective.p1.detach(), torch.tensor([-7.5, -10.0]))
    history = read_jsonl_history(tmp_path / "metrics.jsonl")
    train = [row for row in history if "train/loss" in row]
    assert [row["step"] for row in train] == [1, 2, 3, 4]  # optimizer steps done
    assert train[1]["train/first"] == pytest.approx(-25.0)  # p1 = (-3, -4) after step 0: a·p1 = -25
    assert train[1]["train/loss"] == pytest.approx(-25.0 - 144.0)
    assert train[0]["schedule/lr"] == 1.0
    for row in train:
        assert row["throughput/images_per_s"] > 0 and 0 <= row["throughput/data_wait_fraction"] <= 1
        assert row["throughput/images_per_s"] == pytest.approx(row["throughput/images_per_s_per_rank"])
        assert row["memory/peak_mb"] > 0 and row["time/forward_s"] >= 0
    assert [row["eval/mAP"] for row in history if "eval/mAP" in row] == [0.5, 0.5]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "latest",
        "step_00000002",
        "step_00000004",
    ]


def test_trainer_rejects_non_objective(single_rank: None, tmp_path) -> None:
    with pytest.raises(ValueError, match="objective must be a reidscale Objective"):
        Trainer(nn.Linear(2, 2), _config(tmp_path, "none"), tmp_path)  # type: ignore[arg-type]


class _CountingTracker(NullTracker):
    """Records how far each progress display was advanced (what a console bar would show)."""

    def __init__(self) -> None:
        super().__init__()
        self.bars: list[tuple[int | None, str, list[int]]] = []

    def progress(self, iterable, total=None, desc=""):
        shown: list[int] = []
        self.bars.append((total, desc, shown))
        for item in iterable:
            yield item
            shown.append(item)  # counted when the next item is asked for, as tqdm does


def test_progress_display_advances_once_per_step(single_rank: None, tmp_path) -> None:
    tracker = _CountingTracker()
    Trainer(LinearLoss(), _config(tmp_path, "none", max_steps=3), tmp_path, tracker=tracker).run([BATCH] * 3)
    assert tracker.bars == [(3, "train steps", [0, 1, 2])]  # each of the 3 steps counted once


def test_warmup_in_epochs_is_counted_from_the_data(single_rank: None, tmp_path) -> None:
    from reidscale.engine.config import ScheduleConfig

    schedule = ScheduleConfig(warmup_epochs=1.5, warmup_start_lr=0.0)
    config = _config(tmp_path, "none", max_steps=None, epochs=3, log_every=1, schedule=schedule)
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    with tracker:  # 2 batches per epoch: 3 warm-up steps of 6, lr 0 → 1/3 → 2/3 → 1, then cosine 1 → 0
        trainer = Trainer(LinearLoss(), config, tmp_path, tracker=tracker)
        trainer.run([BATCH] * 2)
    lrs = [
        row["schedule/lr"] for row in read_jsonl_history(tmp_path / "metrics.jsonl") if "train/loss" in row
    ]
    assert trainer.schedule.warmup_steps == 3
    assert lrs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0]) and lrs[4] < 1.0
    with pytest.raises(ValueError, match=r"schedule\.warmup_epochs"):
        Trainer(
            LinearLoss(),
            _config(tmp_path, "none", schedule=ScheduleConfig(warmup_epochs=1, warmup_steps=2)),
            tmp_path,
        )
