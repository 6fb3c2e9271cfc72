"""Selective contrastive learning says once, at set-up, when no training image has a camera id."""

from __future__ import annotations

import torch

from reidscale.objectives.base import TrainingContext
from reidscale.objectives.selective import SelectiveConfig
from tests.support.selective_world import objective_with_fixed_net

CONFIG = SelectiveConfig(global_dim=16, local_dim=4, num_stripes=4, cam_penalty=0.04)
MESSAGE = (
    "cameras: every training image has camera id -1 (unknown): same-camera exclusion is off "
    "(scl.cam_penalty=0.04 adds the same to every row)"
)


def _setup_report(cameras: torch.Tensor) -> list[str]:
    lines: list[str] = []
    objective = objective_with_fixed_net(CONFIG, cameras)
    objective.setup(TrainingContext(torch.device("cpu"), resuming=True, report=lines.append))
    return lines


def test_all_unknown_cameras_are_reported_once() -> None:
    assert _setup_report(torch.full((6,), -1, dtype=torch.int64)) == [MESSAGE]


def test_known_cameras_are_not_reported() -> None:
    assert _setup_report(torch.tensor([-1, -1, 0, -1, -1, -1])) == []
    assert _setup_report(torch.tensor([0, 1, 0, 1, 2, 2])) == []


def test_unknown_cameras_leave_the_selection_as_without_the_penalty() -> None:
    """What the message claims: with every camera -1 the penalty is the same for every row."""
    from reidscale.kernels.reference_topk import bank_topk

    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(5, 8, generator=generator), torch.randn(40, 8, generator=generator)
    unknown = {"query_cams": torch.full((5,), -1), "bank_cams": torch.full((40,), -1)}
    scores, indices = bank_topk(queries, bank, 7, cam_penalty=0.04, **unknown)
    plain_scores, plain_indices = bank_topk(queries, bank, 7)
    assert torch.equal(indices, plain_indices)
    torch.testing.assert_close(scores, plain_scores - 0.04)
