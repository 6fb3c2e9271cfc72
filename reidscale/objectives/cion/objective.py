"""CION's objective: a student and its EMA teacher, multi-crop views, the identity distillation loss.

Per step (``Objective`` protocol; batch = identity N × K views, ``{"views": [V × float [B, 3, h, w]], ...}``
with the two global views first)::

    student_out = head(backbone(views))      one backbone call per resolution run (MultiCropWrapper) [V·B, C]
    teacher_out = teacher(views[:2])         no gradient                                             [2·B, C]
    loss = identity_distillation_loss(teacher_out, student_out, centre, K, τ_t, τ_s)
    after the optimizer step: teacher ← EMA of the student (on an fp32 master copy), centre ← update with the
    mean teacher output of the step (all its micro-batches on all ranks),
    the prototype layer gets no gradient while it is frozen

K is the batch's ``images_per_id`` (the view streams give the sampler's K of the epoch), else the K schedule's
value at the step's epoch; τ_t is the engine's temperature schedule, the EMA momentum its momentum schedule.

Decisions (docs/methods.md): the teacher is a second copy of the network inside the objective, so the engine
places, casts and partitions it like the student (under ZeRO-3 each rank holds its slices, and the EMA runs
slice by slice); because a bf16 engine casts it too, the average is kept in an fp32 master copy
(``models.ema.ema_master``) from which the teacher is rounded after every update. The prototype layer is
frozen during the first epoch by cutting its gradient in the forward pass (``CionHead.prototypes_frozen``):
the released code drops its gradients before the optimizer step, which a DeepSpeed optimizer does not let
one reach, and writing the old values back after the step would not reach the optimizer's own fp32 copy
under ZeRO 1-3. The centre and the master copy are checkpointed as extra state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reidscale.models.ema import ema_master, ema_update_
from reidscale.models.multicrop import MultiCropWrapper
from reidscale.models.registry import Backbone
from reidscale.objectives.base import Objective, StepOutput, TrainingContext
from reidscale.objectives.cion.center import update_center
from reidscale.objectives.cion.config import CionConfig
from reidscale.objectives.cion.head import CionHead
from reidscale.objectives.cion.loss import identity_distillation_loss


def _values(param: nn.Parameter) -> Tensor:
    """What this rank holds of ``param``: its ZeRO-3 slice, or the whole tensor."""
    return param.ds_tensor if hasattr(param, "ds_id") else param.data


class CionDistillation(Objective):
    """Student (backbone + ``CionHead``) and its EMA teacher; see the module doc.

    Args:
        backbone: the student's backbone (the teacher gets a copy with the same initial weights).
        config: ``CionConfig``.
        k_at: epoch → K, the sampler's schedule (``KSchedule.k_at``).
        sync_batchnorm: BatchNorm statistics over all ranks (SyncBatchNorm, CUDA only: the method asks for it
            on GPUs with several ranks; on the CPU each rank normalises with its own batch).
    """

    name = "cion"
    extra_state_per_rank = True  # the master copy holds this rank's slices under ZeRO-3

    def __init__(
        self,
        backbone: Backbone,
        config: CionConfig,
        k_at: Callable[[int], int],
        sync_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if not hasattr(backbone, "feature_dim"):
            raise ValueError(f"backbone {type(backbone).__name__} has no feature_dim")
        self.config, self.k_at = config, k_at
        head = CionHead(
            backbone.feature_dim,
            config.num_prototypes,
            config.hidden_dim,
            config.bottleneck_dim,
            batchnorm=config.head_batchnorm,
        )
        self.student = MultiCropWrapper(backbone, head)
        if sync_batchnorm:  # before the engine wraps the objective: its hooks must see the final modules
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.center = torch.zeros(config.num_prototypes)  # fp32, not a buffer: never cast to bf16
        self.master: list[Tensor] = []
        self.steps_per_epoch = 1
        self.images_per_id = k_at(0)
        self.teacher_temp = 0.04
        self._teacher_outs: list[Tensor] = []  # this step's micro-batches (gradient accumulation)

    def setup(self, context: TrainingContext) -> None:
        self.steps_per_epoch = max(1, int(context.steps_per_epoch))
        self.center = self.center.to(context.device)
        self.master = ema_master(self.teacher, self.student)  # replaced by the checkpoint's when resuming

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def before_step(self, step: int, schedule_values: dict[str, float]) -> None:
        epoch = self.epoch_of(step)
        self.images_per_id = self.k_at(epoch)
        self._teacher_outs = []  # a skipped step's outputs do not move the centre
        self.teacher_temp = float(schedule_values.get("temperature", self.teacher_temp))
        self.student.head.prototypes_frozen = epoch < self.config.freeze_last_layer_epochs

    def forward(self, batch: dict[str, Any]) -> StepOutput:
        views = batch["views"]
        if len(views) != 2 + self.config.num_local:
            raise ValueError(
                f"CION expects 2 global + cion.num_local={self.config.num_local} local views, "
                f"got {len(views)}"
            )
        images_per_id = int(batch.get("images_per_id", self.images_per_id))  # the sampler's K, if it says
        student_out = self.student(views)
        with torch.no_grad():
            teacher_out = self.teacher(views[:2])
        loss = identity_distillation_loss(
            teacher_out,
            student_out,
            self.center,
            images_per_id,
            teacher_temp=self.teacher_temp,
            student_temp=self.config.student_temp,
        )
        self._teacher_outs.append(teacher_out.detach())
        parts = {"distillation": loss.detach(), **self.entropies(teacher_out, student_out.detach())}
        return StepOutput(loss, parts, num_images=int(views[0].shape[0]))

    @torch.no_grad()
    def entropies(self, teacher_out: Tensor, student_out: Tensor) -> dict[str, Tensor]:
        """Mean entropy (nats) of the teacher's centred, sharpened distributions and of the student's:
        both near log C means the outputs have collapsed to uniform (what centring alone would cause), a
        teacher near 0 means they have collapsed to one prototype (what sharpening alone would cause)."""
        teacher = torch.softmax(
            (teacher_out.float() - self.center.reshape(1, -1)) / self.teacher_temp, dim=-1
        )
        student = torch.log_softmax(student_out.float() / self.config.student_temp, dim=-1)
        return {
            "teacher_entropy": -(teacher * teacher.clamp_min(1e-30).log()).sum(-1).mean(),
            "student_entropy": -(student.exp() * student).sum(-1).mean(),
        }

    @torch.no_grad()
    def after_step(self, step: int, schedule_values: dict[str, float]) -> None:
        ema_update_(self.teacher, self.student, float(schedule_values["momentum"]), self.master)
        if self._teacher_outs:  # the mean over every micro-batch of the step on every rank
            outputs = self._teacher_outs
            teacher_out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
            self.center = update_center(self.center, teacher_out, self.config.center_momentum)
            self._teacher_outs = []

    def extra_state(self) -> dict[str, Any]:
        return {"center": self.center.detach().cpu(), "master": [copy_.cpu() for copy_ in self.master]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"center", "master"}:
            raise ValueError(f"CION extra state must hold center and master, got {sorted(state)}")
        params = list(self.teacher.parameters())
        if state["center"].shape != self.center.shape or len(state["master"]) != len(params):
            raise ValueError(
                f"CION extra state does not fit this model: centre {tuple(state['center'].shape)} and "
                f"{len(state['master'])} teacher tensors, expected {tuple(self.center.shape)} and "
                f"{len(params)}"
            )
        self.center = state["center"].to(self.center.device)
        self.master = [copy_.to(_values(p).device) for copy_, p in zip(state["master"], params, strict=True)]

    def feature_model(self) -> nn.Module:
        """The teacher's backbone: what evaluation measures and pre-training hands to fine-tuning."""
        return self.teacher.backbone
