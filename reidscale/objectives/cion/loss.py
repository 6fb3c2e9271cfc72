"""CION's identity-guided distillation loss (docs/methods.md#stage-2-identity-guided-self-distillation).

Notation (the function's arguments): B images per view on this rank, N identities × K images each
(B = N·K, rows identity-major inside a view: row n·K + k is image k of identity n), V student views of which
the first two are the global views the teacher also sees, C prototypes.

    P_a = softmax((t_a − centre) / τ_t)          teacher, a ∈ {1, 2}        [B, C]
    Q_v = log_softmax(s_v / τ_s)                 student, v ∈ {1 … V}       [B, C]
    CE(P, Q; rows) = mean over rows of −Σ_c P·Q

    L_{a,v} = [CE(P_a, Q_v; all B rows) + Σ_{i≠j} CE(P_a[i::K], Q_v[j::K]; N rows)] / (K(K−1) + 1)
    L = mean of L_{a,v} over the 2(V − 1) pairs a ∈ {1, 2}, v ≠ a

Written as it reads, the identity term costs K(K − 1) cross entropies per pair. Inside one identity n,
Σ_{i≠j} P_i·Q_j = (Σ_i P_i)·(Σ_j Q_j) − Σ_i P_i·Q_i, so with the per-identity sums P̄_a[n] = Σ_i P_a[nK + i]
and Q̄_v[n] = Σ_j Q_v[nK + j]:

    B·CE(P_a, Q_v; all)              = −Σ_rows P_a·Q_v                        =: −D_{a,v}
    N·Σ_{i≠j} CE(P_a[i::K], Q_v[j::K]) = −(Σ_n P̄_a[n]·Q̄_v[n] − D_{a,v})

and the sum over v ≠ a needs only Q_tot = Σ_v Q_v and Q̄_tot (minus the a-th term): O(V·B·C) in all, the
same order as computing the log-probabilities themselves. The student's log-probabilities are computed one
view at a time and only summed; autograd keeps each view's log_softmax output for its backward, one fp32
copy of the V·B × C student log-probabilities in all (and B × C per teacher view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def identity_distillation_loss(
    teacher_out: Tensor,
    student_out: Tensor,
    center: Tensor,
    images_per_id: int,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> Tensor:
    """CION's loss (module doc) for one rank's batch; a scalar with gradient to ``student_out`` only,
    computed in fp32 (fp64 for fp64 inputs) whatever the inputs' precision.

    Args:
        teacher_out: [2·B, C] raw teacher head outputs of the two global views, view-major (no gradient
            flows into it: the teacher is an average of the student, not trained).
        student_out: [V·B, C] raw student head outputs, view-major, its first two chunks the global views.
        center: [C] or [1, C], the running centre of the teacher outputs.
        images_per_id: K; B must be a multiple of it (rows identity-major inside each view).
        teacher_temp, student_temp: τ_t and τ_s.

    Raises:
        ValueError: shapes that do not fit (naming the argument and what was expected).
    """
    if teacher_out.dim() != 2 or student_out.dim() != 2 or teacher_out.shape[1] != student_out.shape[1]:
        raise ValueError(
            "teacher_out [2B, C] and student_out [V*B, C] must be matrices with the same C, got "
            f"{list(teacher_out.shape)} and {list(student_out.shape)}"
        )
    if teacher_out.shape[0] % 2:
        raise ValueError(
            f"teacher_out must hold the 2 global views ([2B, C]), got {teacher_out.shape[0]} rows"
        )
    batch, prototypes = teacher_out.shape[0] // 2, teacher_out.shape[1]
    k = int(images_per_id)
    if k < 1 or batch % k:
        raise ValueError(f"images_per_id must be >= 1 and divide the {batch} images per view, got {k}")
    if student_out.shape[0] % batch or student_out.shape[0] // batch < 2:
        raise ValueError(
            f"student_out must hold V >= 2 views of the {batch} images ([V*B, C]), "
            f"got {student_out.shape[0]} rows"
        )
    if center.numel() != prototypes:
        raise ValueError(f"center must hold C = {prototypes} values, got {list(center.shape)}")
    if teacher_temp <= 0 or student_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got {teacher_temp}, {student_temp}")
    views, identities = student_out.shape[0] // batch, batch // k
    dtype = torch.promote_types(student_out.dtype, torch.float32)  # bf16 / fp16 in, fp32 maths
    with torch.no_grad():
        centred = teacher_out.to(dtype) - center.to(dtype).reshape(1, -1)
        teacher = F.softmax(centred / teacher_temp, dim=-1)
    p = teacher.reshape(2, identities, k, prototypes)  # [2, N, K, C]
    p_sum = p.sum(dim=2)  # P̄_a: [2, N, C]
    diagonal = torch.zeros(2, dtype=dtype, device=student_out.device)  # Σ_{v≠a} D_{a,v}
    crossed = torch.zeros(2, dtype=dtype, device=student_out.device)  # Σ_{v≠a} Σ_n P̄_a·Q̄_v
    for v, chunk in enumerate(student_out.split(batch)):
        q = F.log_softmax(chunk.to(dtype) / student_temp, dim=-1).reshape(identities, k, prototypes)
        # both anchors at once as matrix-vector products: no [2, B, C] product is ever formed
        d = p.reshape(2, -1) @ q.reshape(-1)  # D_{a,v}
        c = p_sum.reshape(2, -1) @ q.sum(dim=1).reshape(-1)  # Σ_n P̄_a[n]·Q̄_v[n]
        keep = torch.ones(2, dtype=dtype, device=student_out.device)
        if v < 2:
            keep[v] = 0.0  # the pair (a, a) is not used
        diagonal = diagonal + keep * d
        crossed = crossed + keep * c
    per_anchor = -(diagonal / batch + (crossed - diagonal) / identities) / (k * (k - 1) + 1)
    return per_anchor.sum() / (2 * (views - 1))
