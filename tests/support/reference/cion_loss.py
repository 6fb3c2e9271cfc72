"""CION's identity distillation loss as its formula reads (a double loop over the ordered pairs of different
images of an identity): the oracle of the tests and the baseline of benchmarks/bench_cion_loss.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def literal_loss(
    teacher_out: Tensor,
    student_out: Tensor,
    center: Tensor,
    k: int,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> Tensor:
    """Every pair (a, v ≠ a): the all-rows cross entropy plus one cross entropy per ordered pair (i, j),
    i ≠ j, of images of the identities, over K(K − 1) + 1; the mean over the pairs. Inputs as
    ``reidscale.objectives.cion.identity_distillation_loss``; computed in the inputs' dtype."""
    batch = teacher_out.shape[0] // 2
    views = student_out.shape[0] // batch
    centred = (teacher_out.detach() - center.reshape(1, -1)) / teacher_temp
    p = [F.softmax(t, dim=-1) for t in centred.split(batch)]
    q = [F.log_softmax(s / student_temp, dim=-1) for s in student_out.split(batch)]

    def cross_entropy(target: Tensor, log_probs: Tensor) -> Tensor:
        return -(target * log_probs).sum(dim=-1).mean()

    pairs = []
    for a in range(2):
        for v in range(views):
            if v == a:
                continue
            total = cross_entropy(p[a], q[v])
            for i in range(k):
                for j in range(k):
                    if i != j:
                        total = total + cross_entropy(p[a][i::k], q[v][j::k])
            pairs.append(total / (k * (k - 1) + 1))
    return torch.stack(pairs).mean()
