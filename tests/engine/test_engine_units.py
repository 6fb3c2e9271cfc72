"""Engine pieces against hand-worked numbers: schedules, param groups, DeepSpeed JSON, config checks,
EMA, per-parameter clipping, the finite-loss check, the preemption flag, checkpoint RNG round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from reidscale.engine.checkpoint import complete_tags, rng_state, set_rng_state, step_tag
from reidscale.engine.clipping import clip_per_param_
from reidscale.engine.config import (
    CheckpointConfig,
    ClipConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    check_train_config,
)
from reidscale.engine.deepspeed_config import render_deepspeed_config, write_deepspeed_config
from reidscale.engine.guards import check_finite
from reidscale.engine.param_groups import apply_schedule, build_optimizer, build_param_groups
from reidscale.engine.preemption import PreemptionFlag
from reidscale.engine.schedules import linear_warmup, schedule_values, warmup_cosine
from reidscale.models.ema import ema_master, ema_update_


def test_warmup_cosine_hand_values() -> None:
    # total 10, warm-up 2 from 0.1 to 1.0, then cosine from 1.0 towards 0 over 8 steps
    expected = {
        0: 0.1,
        1: 0.55,
        2: 1.0,
        4: 0.5 * (1 + math.sqrt(0.5)),
        6: 0.5,
        9: 0.5 * (1 + math.cos(math.pi * 7 / 8)),
    }
    for step, value in expected.items():
        assert warmup_cosine(step, 10, base=1.0, end=0.0, warmup=2, start=0.1) == pytest.approx(
            value, abs=1e-12
        )
    assert warmup_cosine(0, 4, base=0.04, end=0.4) == pytest.approx(0.04)
    assert warmup_cosine(2, 4, base=0.04, end=0.4) == pytest.approx(0.22)  # halfway: the mean


def test_linear_warmup_and_schedule_values() -> None:
    assert [linear_warmup(s, 6, 0.04, 0.07, 3) for s in range(5)] == pytest.approx(
        [0.04, 0.05, 0.06, 0.07, 0.07]
    )
    optim = OptimizerConfig(lr=0.4, weight_decay=0.04)
    sched = ScheduleConfig(
        warmup_steps=1,
        warmup_start_lr=0.1,
        min_lr=0.0,
        weight_decay_end=0.4,
        momentum_start=0.996,
        momentum_end=1.0,
        temperature_start=0.04,
        temperature_end=0.07,
        temperature_warmup_steps=3,
    )
    values = schedule_values(3, 5, optim, sched)  # lr: progress (3-1)/4 = 0.5 → 0.2; wd, momentum: 3/5
    assert values["lr"] == pytest.approx(0.2)
    assert values["weight_decay"] == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * 0.6)))
    assert values["momentum"] == pytest.approx(1.0 + (0.996 - 1.0) * 0.5 * (1 + math.cos(math.pi * 0.6)))
    assert values["temperature"] == pytest.approx(0.07)
    with pytest.raises(ValueError, match=r"step must be in \[0, total=5\)"):
        schedule_values(5, 5, optim, sched)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 2))
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_param_groups_no_decay_on_bias_norm_and_embeddings() -> None:
    net = _Net()
    groups = {g["name"]: g for g in build_param_groups(net, 0.05)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["decay"] == {id(net.conv.weight), id(net.fc.weight)}
    assert ids["no_decay"] == {
        id(p)
        for p in (
            net.conv.bias,
            net.bn.weight,
            net.bn.bias,
            net.fc.bias,
            net.norm.weight,
            net.norm.bias,
            net.pos_embed,
        )
    }
    assert groups["decay"]["weight_decay"] == 0.05 and groups["no_decay"]["weight_decay"] == 0.0
    optimizer = build_optimizer(net, "sgd", 0.1, 0.05)
    apply_schedule(optimizer, {"lr": 0.3, "weight_decay": 0.2})
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.3, 0.2), (0.3, 0.0)]
    with pytest.raises(ValueError, match="optimizer name"):
        build_optimizer(net, "lamb", 0.1, 0.0)


def test_skipped_optimizer_step_changes_nothing() -> None:
    net = nn.Linear(3, 2)
    optimizer = build_optimizer(net, "adamw", 0.1, 0.1)
    net(torch.ones(1, 3)).sum().backward()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.skip_next_step = True
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert not optimizer.state and not optimizer.skip_next_step
    optimizer.step()
    assert not torch.equal(before[0], net.weight)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_json_from_config(stage: int) -> None:
    config = TrainConfig(
        zero_stage=stage,
        precision="bf16",
        micro_batch=8,
        global_batch=64,
        max_steps=10,
        clip=ClipConfig(mode="global_norm", value=3.0),
    )
    rendered = render_deepspeed_config(config, world_size=2)
    assert rendered["zero_optimization"]["stage"] == stage
    assert rendered["gradient_accumulation_steps"] == 4  # 64 / (8 · 2)
    assert rendered["train_batch_size"] == 64 and rendered["train_micro_batch_size_per_gpu"] == 8
    assert rendered["bf16"] == {"enabled": True} and rendered["fp16"]["enabled"] is False
    assert rendered["gradient_clipping"] == 3.0
    assert "optimizer" not in rendered and "scheduler" not in rendered


def test_deepspeed_json_clipping_accumulation_and_file(tmp_path) -> None:
    per_param = TrainConfig(
        micro_batch=4, grad_accumulation=3, max_steps=1, clip=ClipConfig(mode="per_param")
    )
    rendered = render_deepspeed_config(per_param, world_size=4)
    assert rendered["gradient_clipping"] == 0.0  # per-parameter clipping is the engine's, not DeepSpeed's
    assert (rendered["train_batch_size"], rendered["gradient_accumulation_steps"]) == (48, 3)
    path = write_deepspeed_config(per_param, 4, tmp_path / "launch" / "ds.json")
    assert json.loads(path.read_text()) == rendered


@pytest.mark.parametrize(
    ("changes", "world", "message"),
    [
        ({"global_batch": 60}, 2, r"global_batch=60 must be a multiple of micro_batch × world size = 8 × 2"),
        ({"global_batch": 32, "grad_accumulation": 3}, 2, r"grad_accumulation=3 contradicts"),
        ({"zero_stage": 4}, 1, r"train.zero_stage must be 0, 1, 2 or 3"),
        ({"precision": "fp8"}, 1, r"train.precision must be one of"),
        ({"max_steps": None}, 1, r"max_steps and train.epochs are both null"),
        ({"nan_policy": "ignore"}, 1, r"train.nan_policy must be one of"),
        ({"clip": ClipConfig(mode="norm")}, 1, r"train.clip.mode must be one of"),
        ({"optimizer": OptimizerConfig(lr=0.0)}, 1, r"train.optimizer.lr must be > 0"),
    ],
)
def test_config_errors_name_the_field(changes: dict, world: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):  # refused at construction or by check_train_config
        check_train_config(TrainConfig(**{"micro_batch": 8, "max_steps": 5, **changes}), world)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"zero_stage": 7}, r"^train\.zero_stage must be 0, 1, 2 or 3, got 7$"),
        ({"precision": "fp8"}, r"^train\.precision must be one of"),
        ({"micro_batch": 0}, r"^train\.micro_batch must be >= 1, got 0$"),
        ({"schedule": ScheduleConfig(min_lr=-1.0)}, r"^train\.schedule\.min_lr must be >= 0"),
        ({"checkpoint": CheckpointConfig(keep_last=0)}, r"^train\.checkpoint\.keep_last must be >= 1"),
    ],
)
def test_bad_field_refused_at_construction(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_construction_leaves_world_and_job_checks_to_check_train_config() -> None:
    config = TrainConfig(precision="fp16")  # micro_batch, max_steps and epochs all null: the jobs derive them
    with pytest.raises(ValueError, match=r"micro_batch is null"):
        check_train_config(dataclasses.replace(config, precision="fp32"))
    config = TrainConfig(micro_batch=8, max_steps=1, global_batch=60)
    with pytest.raises(ValueError, match=r"global_batch=60 must be a multiple"):
        check_train_config(config, world_size=2)


def test_load_config_and_config_resolved_refuse_a_bad_train_field(capsys: pytest.CaptureFixture[str]) -> None:
    from reidscale.cli import main
    from reidscale.config import load_config
    from reidscale.jobs.roots import root_for

    with pytest.raises(ValueError, match=r"train\.zero_stage must be 0, 1, 2 or 3, got 7"):
        load_config(root_for("pretrain"), None, ["--train.zero_stage", "7"])
    assert main(["config", "pretrain", "--resolved", "--train.zero_stage", "7"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "reidscale config: error: train.zero_stage must be 0, 1, 2 or 3, got 7"


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed with a GPU")
def test_fp16_refused_on_cpu() -> None:
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA GPU"):
        check_train_config(TrainConfig(precision="fp16", max_steps=1))


def test_ema_update_formula() -> None:
    torch.manual_seed(0)
    teacher, student = nn.Linear(3, 2), nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.9)
    for before, after, s in zip(t0, teacher.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * s, rtol=0, atol=1e-7)
    ema_update_(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters(), strict=True))
    with pytest.raises(ValueError, match="does not match student"):
        ema_update_(nn.Linear(3, 2), nn.Linear(2, 3), 0.5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        ema_update_(teacher, student, 1.5)


def test_an_fp32_master_lets_a_bf16_teacher_follow_a_slow_average() -> None:
    """At momentum 0.9995 a bf16 teacher at 1.0 never moves towards a student at 2.0 (each step, 5e-4, is
    below half the bf16 spacing at 1, 2^-8); with the fp32 master it follows the closed form
    t_n = 2 - m^n, rounded to bf16 in the teacher."""
    teacher, student = nn.Linear(4, 3).bfloat16(), nn.Linear(4, 3).bfloat16()
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.fill_(1.0)
            s.fill_(2.0)
    stuck = [p.detach().clone() for p in teacher.parameters()]
    stuck_teacher = nn.Linear(4, 3).bfloat16()
    with torch.no_grad():
        for p, value in zip(stuck_teacher.parameters(), stuck, strict=True):
            p.copy_(value)
    master = ema_master(teacher, student)
    assert all(copy.dtype == torch.float32 for copy in master)
    for _ in range(200):
        ema_update_(teacher, student, 0.9995, master)
        ema_update_(stuck_teacher, student, 0.9995)
    expected = 2.0 - 0.9995**200  # 1.0952
    assert all(torch.allclose(copy, torch.full_like(copy, expected), rtol=0, atol=1e-5) for copy in master)
    assert all(
        p.dtype == torch.bfloat16 and torch.all(p == torch.tensor(expected).bfloat16())
        for p in teacher.parameters()
    )
    assert all(torch.all(p == 1.0) for p in stuck_teacher.parameters())  # the bf16 copy never moved
    with pytest.raises(ValueError, match="master holds 1 tensors, the teacher has 2 parameters"):
        ema_update_(teacher, student, 0.9, master[:1])


def test_per_param_clipping_hand_values() -> None:
    big, small, other = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.tensor([0.0, 12.0])
    norms = clip_per_param_([big, small, other], max_norm=1.0)
    assert norms == pytest.approx([5.0, 0.5, 12.0])
    torch.testing.assert_close(big, torch.tensor([0.6, 0.8]) * 5 / (5 + 1e-6))
    torch.testing.assert_close(small, torch.tensor([0.3, 0.4]))  # within the limit: untouched
    torch.testing.assert_close(other, torch.tensor([0.0, 12.0 / (12 + 1e-6)]))


def test_finite_check_names_parts_single_rank() -> None:
    parts = {"ce": torch.tensor(1.0), "triplet": torch.tensor(float("inf"))}
    report = check_finite(torch.tensor(float("inf")), parts, step=7)
    assert report is not None and report.message() == "non-finite loss at step 7 (rank 0: loss, triplet)"
    assert check_finite(torch.tensor(2.0), {"ce": torch.tensor(1.0)}, step=7) is None
    with pytest.raises(ValueError, match="reserved"):
        check_finite(torch.tensor(2.0), {"loss": torch.tensor(1.0)}, step=0)


def test_preemption_flag_catches_sigterm_and_restores_handler() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with PreemptionFlag() as flag:
        assert not flag.agreed()
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.received == signal.SIGTERM and flag.agreed()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_rng_state_round_trip_and_tags(tmp_path) -> None:
    state = rng_state()
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
    for tag in ("step_00000010", "step_00000002", ".partial_step_00000011"):
        (tmp_path / tag).mkdir()
    assert complete_tags(tmp_path) == ["step_00000002", "step_00000010"] and step_tag(3) == "step_00000003"


def test_setup_adopts_srun_variables(monkeypatch: pytest.MonkeyPatch, free_port: int) -> None:
    from reidscale.engine.distributed import distributed, setup

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # records the original state, so setup's own writes are undone too
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        setup()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port))
    with distributed() as info:  # a single task: a group of one, destroyed on the way out
        assert (info.rank, info.world_size, info.backend) == (0, 1, "gloo")
        assert torch_dist.is_initialized()
    assert not torch_dist.is_initialized()


def test_train_config_loads_through_the_config_loader() -> None:
    from reidscale.config import build_config, describe

    rows = describe(TrainConfig)
    assert (
        all(doc for _, _, doc in rows)
        and ("optimizer.betas", "list of float", "AdamW betas (two values)") in rows
    )
    config = build_config(
        TrainConfig,
        {"zero_stage": 2, "max_steps": 9, "optimizer": {"betas": [0.8, 0.9]}, "clip": {"mode": "per_param"}},
    )
    with pytest.raises(ValueError, match=r"train\.micro_batch is null: the training jobs derive it"):
        check_train_config(config, world_size=2)
    config.micro_batch = 4
    check_train_config(config, world_size=2)
    assert (config.zero_stage, list(config.optimizer.betas), config.clip.mode) == (2, [0.8, 0.9], "per_param")


def test_resolve_checkpoint(tmp_path) -> None:
    from reidscale.engine.checkpoint import resolve_checkpoint

    assert resolve_checkpoint(tmp_path) is None  # no `latest`: nothing to resume
    (tmp_path / "step_00000004").mkdir()
    assert resolve_checkpoint(tmp_path / "step_00000004") == tmp_path / "step_00000004"
    (tmp_path / "latest").write_text("step_00000004\n")
    assert resolve_checkpoint(tmp_path) == tmp_path / "step_00000004"
    (tmp_path / "latest").write_text("step_00000009\n")
    with pytest.raises(ValueError, match="names step_00000009, which does not exist"):
        resolve_checkpoint(tmp_path)
