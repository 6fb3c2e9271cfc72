"""2-rank CPU runs (torchrun, gloo) of the Trainer at ZeRO 0-3 against a plain single-process torch re-run,
and the non-finite loss guard (skip on every rank; stop with a checkpoint)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from reidscale.engine.schedules import schedule_values
from tests.support.engine_toy import (
    GLOBAL_BATCH,
    MICRO_BATCH,
    ZERO_RUNS,
    ZERO_STEPS,
    ToyObjective,
    fixed_data,
    launch,
    zero_config,
)

pytestmark = [pytest.mark.multiproc, pytest.mark.deepspeed]
ATOL, RTOL = 1e-6, 1e-5  # fp32, 2 ranks × 2 micro-batches vs one batch: only summation order differs


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("engine_zero")
    done = launch("zero", out, launcher="deepspeed")
    assert done.returncode == 0, done.stdout[-4000:]
    return out, done.stdout


def _load(out: Path, name: str, rank: int) -> dict:
    return torch.load(out / f"{name}_rank{rank}.pt", weights_only=False)


def reference_run(optimizer_name: str, clip: str, out: Path) -> tuple[dict, dict, list[float]]:
    """The same training in one process with plain torch: full global batch, hand-made param groups."""
    config = zero_config(0, optimizer_name, clip, out, "ref")
    torch.manual_seed(0)
    toy = ToyObjective(teacher=True)
    net, teacher = toy.net, toy.teacher
    decay = [net[0].weight, net[4].weight]  # Linear weights; biases and LayerNorm take no decay
    no_decay = [net[0].bias, net[1].weight, net[1].bias, net[4].bias]
    groups = [{"params": decay}, {"params": no_decay}]
    optim = config.optimizer
    if optimizer_name == "adamw":
        opt = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    else:
        opt = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    x, y = fixed_data(GLOBAL_BATCH * ZERO_STEPS)
    losses = []
    for step in range(ZERO_STEPS):
        values = schedule_values(step, ZERO_STEPS, optim, config.schedule)
        opt.param_groups[0].update(lr=values["lr"], weight_decay=values["weight_decay"])
        opt.param_groups[1].update(lr=values["lr"], weight_decay=0.0)
        rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        micro_losses = [toy(b).loss for b in _micro_batches(x[rows], y[rows])]
        loss = torch.stack(micro_losses).mean()
        opt.zero_grad()
        loss.backward()
        _clip_reference(list(net.parameters()), clip, config.clip.value)
        opt.step()
        with torch.no_grad():
            m = values["momentum"]
            for t, s in zip(teacher.parameters(), net.parameters(), strict=True):
                t.copy_(m * t + (1 - m) * s)
        losses.append(float(loss.detach()))
    return dict(net.named_parameters()), dict(teacher.named_parameters()), losses


def _full_data_loss(weights: dict | None) -> float:
    """Loss of the toy on all rows of the fixed data, with ``weights`` (None = the initial ones)."""
    torch.manual_seed(0)
    toy = ToyObjective()
    if weights is not None:
        toy.net.load_state_dict(weights)
    x, y = fixed_data(GLOBAL_BATCH * ZERO_STEPS)
    with torch.no_grad():
        return float(toy({"x": x, "y": y}).loss)


def _micro_batches(x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    return [{"x": x[i : i + MICRO_BATCH], "y": y[i : i + MICRO_BATCH]} for i in range(0, len(x), MICRO_BATCH)]


def _clip_reference(params: list[torch.nn.Parameter], clip: str, value: float) -> None:
    if clip == "global_norm":
        torch.nn.utils.clip_grad_norm_(params, value)
    elif clip == "per_param":
        for p in params:
            norm = float(p.grad.norm())
            if value / (norm + 1e-6) < 1:
                p.grad.mul_(value / (norm + 1e-6))


@pytest.mark.parametrize(("name", "stage", "optimizer", "clip"), ZERO_RUNS)
def test_zero_stage_matches_plain_torch(
    zero_run: tuple[Path, str], name: str, stage: int, optimizer: str, clip: str
) -> None:
    out, _ = zero_run
    ranks = [_load(out, name, rank) for rank in (0, 1)]
    ref_weights, ref_teacher, ref_losses = reference_run(optimizer, clip, out)
    for got in ranks:
        for key, value in ref_weights.items():
            torch.testing.assert_close(got["weights"][key], value.detach(), atol=ATOL, rtol=RTOL, msg=key)
            torch.testing.assert_close(got["teacher"][key], ref_teacher[key].detach(), atol=ATOL, rtol=RTOL)
        for key, value in got["weights"].items():  # EMA of a zero plain teacher, momentum 0.25
            torch.testing.assert_close(got["gathered_ema"][key], 0.75 * value, atol=1e-7, rtol=1e-6)
            # the run's teacher (sliced under ZeRO-3) through its fp32 master copy, momentum 0.5
            expected = 0.5 * got["mastered"]["before"][key] + 0.5 * value
            torch.testing.assert_close(got["mastered"]["after"][key], expected, atol=1e-7, rtol=1e-6)
    mean_losses = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert mean_losses == pytest.approx(ref_losses, rel=1e-5)
    assert _full_data_loss(got["weights"]) < _full_data_loss(None)  # training lowered the loss
    assert (out / f"ckpt_{name}" / "latest").read_text().strip() == f"step_{ZERO_STEPS:08d}"


def test_bf16_zero2_tracks_fp32_reference(zero_run: tuple[Path, str]) -> None:
    out, _ = zero_run
    ref_weights, _, ref_losses = reference_run("adamw", "global_norm", out)
    for rank in (0, 1):
        got = _load(out, "z2_bf16", rank)
        for key, value in ref_weights.items():
            assert got["weights"][key].dtype == torch.float32  # gathered and cast by the test
            torch.testing.assert_close(got["weights"][key], value.detach(), atol=3e-2, rtol=3e-2, msg=key)
    mean = [(a + b) / 2 for a, b in zip(*(_load(out, "z2_bf16", r)["losses"] for r in (0, 1)), strict=True)]
    assert mean == pytest.approx(ref_losses, rel=3e-2)


@pytest.mark.parametrize("name", ["nan_skip_z0", "nan_skip_z2"])
def test_nan_skip_leaves_weights_unchanged_on_all_ranks(zero_run: tuple[Path, str], name: str) -> None:
    out, log = zero_run
    assert log.count("non-finite loss at step 2 (rank 1: loss, mse): step skipped on every rank") == 4
    for rank in (0, 1):
        got = _load(out, name, rank)
        assert got["skipped"] == [2]
        snaps = got["snapshots"]  # weights at the start of each step
        for key in snaps[2]:
            assert torch.equal(snaps[3][key], snaps[2][key]), key
        assert any(not torch.equal(snaps[2][k], snaps[1][k]) for k in snaps[2])
        assert torch.isfinite(torch.stack([v.sum() for v in got["weights"].values()])).all()
        assert math.isfinite(got["losses"][3])  # finite again after the skipped step


def test_nan_stop_saves_checkpoint_and_raises(zero_run: tuple[Path, str]) -> None:
    out, _ = zero_run
    folder = out / "ckpt_nan_stop"
    assert (folder / "latest").read_text().strip() == "step_00000002"
    saved = torch.load(folder / "step_00000002" / "mp_rank_00_model_states.pt", weights_only=False)
    assert saved["step"] == 2 and saved["position"] == 4  # 2 steps × 2 micro-batches consumed
    for rank in (0, 1):
        got = _load(out, "nan_stop", rank)
        assert got["error"].startswith("non-finite loss at step 2 (rank 1: loss, mse)")
        assert got["losses"] is None
        for key, value in got["snapshots"][2].items():
            assert torch.equal(saved["module"][f"net.{key}"], value), key
