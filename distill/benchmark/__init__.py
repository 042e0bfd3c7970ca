"""The CIFAR-100 benchmark of the CRD paper: its tasks (and, later, sweeps and reports)."""

from distill.benchmark.tasks import TASKS, Task, get_task

__all__ = ["TASKS", "Task", "get_task"]
