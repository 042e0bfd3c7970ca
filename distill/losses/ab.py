"""Activation boundaries (Heo et al., "Knowledge Transfer via Distillation of
Activation Boundaries Formed by Hidden Neurons", AAAI 2019).

A neuron's activation boundary is the hyperplane where its pre-activation
crosses zero. With ρ(x) = 1[x > 0], the paper's *activation transfer loss*
counts the neurons whose activation state differs,

    L_AT(I) = ‖ ρ(T(I)) − ρ(S(I)) ‖₁,

which has no useful gradient. The paper replaces it by its piecewise
differentiable *alternative loss*, a squared hinge with margin μ on the
(connected) student pre-activation r(S(I)), σ being the ReLU:

    L(I) = ‖ ρ(T(I)) ⊙ σ(μ𝟙 − r(S(I))) + (𝟙 − ρ(T(I))) ⊙ σ(μ𝟙 + r(S(I))) ‖²₂.

Element by element, with s the connected student value and t the teacher value
(both taken *before* the activation), this is

    ℓ(s, t) = (s + μ)² · [s > −μ] · [t ≤ 0]  +  (s − μ)² · [s ≤ μ] · [t > 0]

(:func:`ab_criterion`): where the teacher neuron is off, the student is pushed
below −μ; where it is on, above +μ.

The CRD benchmark (RepDistiller ``ABLoss`` and ``helper/pretrain.py``) applies
it to the pre-activation maps ``feats[1:-1]`` of both networks
(``FeatureRecord.preact_maps[1:]``), with layer weights 2^(i−n+1) for the
i-th of n layers (the deepest counts 1, each shallower one half as much), and
scales each layer's sum over all elements by 1/B · 3/1000. AB acts **only**
through its init stage: the connectors and the student's feature layers are
trained with this loss for 30 epochs; in the main stage the term is zero
(the reference computes ``loss_kd = 0`` for AB), so its weight has no effect.

Connectors r follow the reference's ``Connector``: identity where the student
map already has the teacher's shape, otherwise the reference ``ConvReg``
(conv / transposed conv sized from the two shapes, then BN) **without** its
ReLU, since the targets are pre-activations that take both signs.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, InitStage, LossContext
from distill.losses.fitnet import ConvRegressor
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

#: The reference's scale of every layer term: (sum over elements) / B · 3 / 1000.
AB_SCALE = 3.0 / 1000.0


def ab_criterion(student: Tensor, teacher: Tensor, margin: float) -> Tensor:
    """Element-wise alternative AB loss ℓ(s, t) (Heo et al., the alternative loss; see the module docstring).

    ℓ(s, t) = (s + μ)²·[s > −μ]·[t ≤ 0] + (s − μ)²·[s ≤ μ]·[t > 0], same shape as the inputs.
    """
    teacher_on = teacher > 0
    push_down = (student + margin).pow(2) * ((student > -margin) & ~teacher_on)
    push_up = (student - margin).pow(2) * ((student <= margin) & teacher_on)
    return push_down + push_up


def ab_layer_weights(num_layers: int) -> list[float]:
    """The reference's layer weights 2^(i − n + 1), i = 0..n−1 (the last, deepest layer gets 1)."""
    return [2.0 ** (i - num_layers + 1) for i in range(num_layers)]


def ab_loss(students: list[Tensor], teachers: list[Tensor], margin: float) -> Tensor:
    """The init-stage objective: Σ_i w_i · Σ_elements ℓ(s_i, t_i) / B · 3/1000."""
    weights = ab_layer_weights(len(students))
    batch_size = students[0].shape[0]
    total = students[0].new_zeros((), dtype=torch.float32)
    for weight, s, t in zip(weights, students, teachers):
        total = total + weight * ab_criterion(s.float(), t.detach().float(), margin).sum()
    return total / batch_size * AB_SCALE


class LinearConvRegressor(ConvRegressor):
    """The reference's ``ConvReg(use_relu=False)``: FitNet's regressor (conv or convT, then BN) without the ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


def build_connector(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """Identity when the shapes already agree, else a ReLU-free conv regressor onto the teacher's shape."""
    if tuple(student_shape) == tuple(teacher_shape):
        return nn.Identity()
    return LinearConvRegressor(student_shape, teacher_shape)


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


@register_loss("ab")
class ABLoss(DistillLoss):
    """Activation-boundary distillation, trained in an init stage; zero in the main stage.

    Args:
        margin: the hinge margin μ of the alternative loss (1 in the reference).
    """

    def __init__(self, context: LossContext, *, margin: float = 1.0) -> None:
        super().__init__(context)
        if margin < 0:
            raise ValueError(f"ab margin must be non-negative, got {margin}")
        student_shapes = list(context.student.preact_maps[1:])
        teacher_shapes = list(context.teacher.preact_maps[1:])
        if not student_shapes or len(student_shapes) != len(teacher_shapes):
            raise ValueError(
                f"ab pairs the intermediate maps (feature maps 1..n−1) of both networks one to one: the student "
                f"has {len(student_shapes)} and the teacher {len(teacher_shapes)}"
            )
        connectors = []
        for index, (s, t) in enumerate(zip(student_shapes, teacher_shapes), start=1):
            try:
                connectors.append(build_connector(s, t))
            except ValueError:
                raise ValueError(
                    f"ab cannot connect the student's map {index} ({_fmt(s)}) to the teacher's ({_fmt(t)}): the "
                    f"connector handles a student map twice as large, half as large, or at least as large in "
                    f"height and width as the teacher's"
                ) from None
        self.connectors = nn.ModuleList(connectors)
        self.margin = margin

    def connect(self, student_maps: list[Tensor]) -> list[Tensor]:
        """The student's intermediate pre-activation maps mapped onto the teacher's shapes."""
        return [connector(m) for connector, m in zip(self.connectors, student_maps)]

    def stage_loss(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        """The init-stage objective on ``preact_maps[1:]`` (the reference's preact ``feats[1:-1]``)."""
        connected = self.connect(student.preact_maps[1:])
        return ab_loss(connected, [t.detach() for t in teacher.preact_maps[1:]], self.margin)

    def init_stage(self) -> InitStage:
        return InitStage(
            loss=self.stage_loss,
            modules=list(self.connectors),
            train_student_features=True,
            lr=None,  # the recipe's lr (0.05, or 0.01 for MobileNetV2/ShuffleNet students)
            freeze_after=True,  # the reference keeps the connectors in eval and out of the optimiser afterwards
        )

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        """Zero: in the benchmark AB acts only through its init stage."""
        return torch.zeros((), device=student.logits.device)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Nothing: the connectors train in the init stage only."""
        return iter(())

    def summary(self) -> str:
        kinds = ", ".join("identity" if isinstance(c, nn.Identity) else c.kind for c in self.connectors)
        return f"margin {self.margin}, connectors [{kinds}]; init stage only (main-stage term is 0)"

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
