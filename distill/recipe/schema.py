"""The recipe schema: what a YAML recipe may contain, with types and defaults.

Defaults are the reference CIFAR-100 settings of the CRD paper (RepDistiller):
SGD with momentum 0.9 and weight decay 5e-4, lr 0.05, 240 epochs with ×0.1 steps
at epochs 150/180/210, batch 64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distill.schema import at_least, between, checked, positive

Precision = Literal["fp32", "bf16", "fp16"]

SEED_RANGE = "must be an integer from 0 to 2**32 - 1 (NumPy's seed range)"

TrackerName = Literal["tensorboard", "wandb", "mlflow", "aim", "comet_ml"]
"""The experiment trackers a run can log to (through Accelerate's trackers, :mod:`distill.engine.tracking`)."""


def increasing(milestones: list[int]) -> list[int]:
    """The schedule's milestones, which must not go back in time."""
    if milestones != sorted(milestones):
        raise ValueError(f"must be increasing, got {milestones}")
    return milestones


@dataclass
class ModelSpec:
    """A network: its architecture name and, optionally, weights to load strictly."""

    arch: str
    checkpoint: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherSpec:
    """The frozen teacher: a manifest name (``teacher: {name: resnet32x4}``) or an architecture and weights.

    With ``name``, the architecture and the checkpoint come from the teacher manifest
    (``teachers/cifar100.yaml``, or ``manifest``); an explicit ``checkpoint`` still wins,
    which is how a run directory's resolved ``recipe.yaml`` pins the file it used.
    """

    arch: str | None = None
    checkpoint: str | None = None
    name: str | None = None
    manifest: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViewSpec:
    """One role's view: ``standard`` (the dataset's own augmentation) or a registered view with its options."""

    name: str = "standard"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViewsSpec:
    """Augmentations of each training image (see ``distill.data.views``).

    ``teacher``/``student``: a different view per network. ``shared``: views every
    network sees, each in its own forward pass (MLKD's weak and strong views); it
    cannot be combined with per-network views.
    """

    teacher: ViewSpec = field(default_factory=ViewSpec)
    student: ViewSpec = field(default_factory=ViewSpec)
    shared: list[ViewSpec] | None = None


@dataclass
class DataSpec:
    """Where the data comes from and how it is batched.

    ``loader``: ``device`` keeps the whole training set on the training device as
    uint8 and makes each batch there (crop, flip, normalise as batched tensor ops);
    ``workers`` is the classic DataLoader with worker processes; ``auto`` takes
    ``device`` for datasets that support it (CIFAR) and ``workers`` otherwise.

    ``views``: the teacher and the student see different views of each training image,
    or both see several views (default: both see the dataset's standard augmentation,
    one tensor).
    """

    dataset: str = "cifar100"
    root: str = "data"
    download: bool = False
    verify: bool = True
    batch_size: int = field(default=64, metadata=positive())
    test_batch_size: int = field(default=64, metadata=positive())
    num_workers: int = field(default=2, metadata=at_least(0))
    loader: Literal["auto", "device", "workers"] = "auto"
    views: ViewsSpec | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimizerSpec:
    """The optimiser and its settings.

    ``reference_batch_size``: the effective batch (all processes together) that
    ``lr`` was tuned for; null means ``data.batch_size``, i.e. one process. It
    changes nothing in training: a start logs the effective batch beside it and
    warns when they differ (``distill.engine.batch_plan``); the lr is never scaled
    silently.

    ``fused``: one fused kernel for the whole update of every parameter (PyTorch's
    ``fused=True``) instead of the default multi-tensor (``foreach``) kernels: fewer
    launches per step on a GPU; the same update up to float rounding.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.05, metadata=positive())
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    reference_batch_size: int | None = field(default=None, metadata=positive())
    fused: bool = False


@dataclass
class ScheduleSpec:
    """Step decay: lr × gamma at each milestone epoch (epochs counted from 1)."""

    epochs: int = field(default=240, metadata=positive())
    milestones: list[int] = field(default_factory=lambda: [150, 180, 210], metadata=checked(increasing))
    gamma: float = 0.1


@dataclass
class InitSpec:
    """Overrides for the init stages that losses declare (AB, FT, FSP): null keeps the loss's own value."""

    epochs: int | None = None
    lr: float | None = None


def distinct(names: list[str]) -> list[str]:
    """A list of names, each at most once."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once")
    return names


@dataclass
class TrackingSpec:
    """Where the run's scalars go besides ``metrics.jsonl``: experiment trackers, through Accelerate.

    ``log_with``: TensorBoard (event files in the run directory's ``tensorboard/``), and
    Weights & Biases, MLflow, Aim or Comet when their package is installed; ``[]`` for none.
    ``project``: the W&B or Comet project, the MLflow or Aim experiment the run joins.
    Changes no result: a run resumed or swept with another ``tracking`` is the same run.
    """

    log_with: list[TrackerName] = field(default_factory=lambda: ["tensorboard"], metadata=checked(distinct))
    project: str = "distill"


@dataclass
class LossSpec:
    """One term of the objective: ``weight × loss``; ``type`` defaults to the term's name."""

    name: str
    type: str
    weight: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    """A complete, validated training recipe.

    Speed settings: ``precision`` runs the networks under autocast (losses, scores and
    memory banks stay float32); ``channels_last`` stores the networks' weights and
    inputs NHWC (faster convolutions on recent GPUs); ``compile`` applies
    ``torch.compile`` with ``compile_backend`` to the student and the teacher;
    ``cuda_graph`` records the whole training step (both networks, the losses, the
    memory update, backward and the optimiser) as one CUDA graph and replays it, so the
    host launches one graph instead of every kernel (one CUDA process, fp32 or bf16;
    :mod:`distill.engine.step_graph`); ``optimizer.fused`` fuses the optimiser's update.
    ``async_checkpoint`` writes checkpoint files in a background thread (a CPU copy of
    the state is taken first, so results do not change) instead of idling the
    accelerator while ``last.pt``/``best.pt`` go to disk; the run still waits for the
    write before it stops or ends.

    Reliability: a checkpoint is written at the end of every epoch and, with
    ``checkpoint_every_steps: N`` (0: off), every N optimisation steps as well, so a
    killed run resumes exactly where that checkpoint was taken. A non-finite loss or
    gradient stops the run, unless ``skip_nonfinite: N`` lets up to N such steps be
    skipped (not applied) instead.
    """

    student: ModelSpec
    losses: dict[str, LossSpec]
    name: str = "run"
    description: str = ""
    teacher: TeacherSpec | None = None
    data: DataSpec = field(default_factory=DataSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    init: InitSpec = field(default_factory=InitSpec)
    seed: int = field(default=0, metadata=between(0, 2**32 - 1, SEED_RANGE))
    deterministic: bool = False
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    cuda_graph: bool = False
    log_every: int = field(default=50, metadata=positive())
    checkpoint_every_steps: int = field(default=0, metadata=at_least(0))
    async_checkpoint: bool = False
    skip_nonfinite: int = field(default=0, metadata=at_least(0))
    output_dir: str = "runs"
    plugins: list[str] = field(default_factory=list)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
