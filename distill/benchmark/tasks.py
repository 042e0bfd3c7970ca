"""The 13 CIFAR-100 teacher→student tasks of the CRD paper (Tian et al., ICLR 2020, Table 1 and 2).

Named once, here, so that recipes, sweeps and reports agree on them. A task's
name is ``<teacher>-<student>``, which is also its recipe file name.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.registry import did_you_mean

SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
"""Students the reference trains with lr 0.01 instead of 0.05 (RepDistiller train_student.py)."""


@dataclass(frozen=True)
class Task:
    teacher: str
    student: str
    same_family: bool

    @property
    def name(self) -> str:
        return f"{self.teacher}-{self.student}"

    @property
    def lr(self) -> float:
        return 0.01 if self.student in SMALL_LR_STUDENTS else 0.05


TASKS: tuple[Task, ...] = (
    Task("wrn_40_2", "wrn_16_2", True),
    Task("wrn_40_2", "wrn_40_1", True),
    Task("resnet56", "resnet20", True),
    Task("resnet110", "resnet20", True),
    Task("resnet110", "resnet32", True),
    Task("resnet32x4", "resnet8x4", True),
    Task("vgg13", "vgg8", True),
    Task("vgg13", "MobileNetV2", False),
    Task("ResNet50", "MobileNetV2", False),
    Task("ResNet50", "vgg8", False),
    Task("resnet32x4", "ShuffleV1", False),
    Task("resnet32x4", "ShuffleV2", False),
    Task("wrn_40_2", "ShuffleV1", False),
)

TEACHERS: tuple[str, ...] = tuple(dict.fromkeys(task.teacher for task in TASKS))


def get_task(name: str) -> Task:
    for task in TASKS:
        if task.name == name:
            return task
    names = [task.name for task in TASKS]
    raise KeyError(f"unknown task {name!r}.{did_you_mean(name, names)} Tasks: {', '.join(names)}")
