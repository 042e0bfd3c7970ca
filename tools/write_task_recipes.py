"""Write the per-task recipe files of one method for the 13 CIFAR-100 tasks (and the teacher recipes).

Each recipe is a few lines that compose shared fragments from ``recipes/cifar100/_base_``:
the dataset and schedule, the teacher (``_base_/teacher/<arch>.yaml``) and the method
(``_base_/<method>.yaml``). A new method needs its fragment and one entry in METHODS.

    python tools/write_task_recipes.py            # every method below, plus teachers
    python tools/write_task_recipes.py kd         # one method
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.benchmark.tasks import SMALL_LR_STUDENTS, TASKS, TEACHERS  # noqa: E402

RECIPES = ROOT / "recipes" / "cifar100"

# method → (fragments under _base_, uses the teacher, one-line description template)
METHODS: dict[str, tuple[tuple[str, ...], bool, str]] = {
    "vanilla": (("ce",), False, "student alone: {student} trained with CE only (the baseline of task {task})"),
    "kd": (("kd",), True, "KD (Hinton): {teacher} → {student}, 0.1·CE + 0.9·KD, T=4"),
    "crd": (("crd",), True, "CRD: {teacher} → {student}, CE + 0.8·CRD (NCE, K=16384, T=0.07)"),
    "crd_kd": (("crd", "plus_kd"), True, "CRD+KD: {teacher} → {student}, CE + KD + 0.8·CRD"),
    "ml_cpc": (
        ("ml_cpc",),
        True,
        "ML-CPC: {teacher} → {student}, CE + 0.8·ML-CPC, alpha=1 (the paper's alpha is not known)",
    ),
    "ml_cpc_kd": (
        ("ml_cpc", "plus_kd"),
        True,
        "ML-CPC+KD: {teacher} → {student}, CE + KD + 0.8·ML-CPC, alpha=1 (the paper's alpha is not known)",
    ),
    "segmental": (
        ("segmental",),
        True,
        "EXPERIMENTAL segmental MI (MUSIC-style, variant B): {teacher} → {student}, CE + segmental (S=32, C=32)",
    ),
    "segmental_kd": (
        ("segmental", "plus_kd"),
        True,
        "EXPERIMENTAL segmental MI+KD (MUSIC-style, variant B): {teacher} → {student}, CE + KD + segmental (S=32, C=32)",
    ),
    "dist": (
        ("dist",),
        True,
        "DIST (Huang et al. 2022): {teacher} → {student}, CE + 2·DIST (tau=4, beta=gamma=1), the released CIFAR config",
    ),
    "wttm": (
        ("wttm",),
        True,
        "WTTM (Zheng & Yang 2024): {teacher} → {student}, CE + 4·WTTM (gamma=0.2): the published vgg13→vgg8 "
        "example for every task, not the per-task settings (paper Appendix A.4, unread); may not reproduce",
    ),
    "wttm_crd": (
        ("crd", "plus_wttm"),
        True,
        "WTTM+CRD (Zheng & Yang 2024): {teacher} → {student}, CE + 0.8·CRD + 4·WTTM (gamma=0.2): the published "
        "vgg13→vgg8 example for every task, not the per-task settings (paper Appendix A.4, unread); may not reproduce",
    ),
    # ITRD's alpha differs between the same-family and the cross-family pairs, so its fragment is per task.
    "itrd": (
        ("itrd/{task}",),
        True,
        "ITRD (Miles et al. 2022): {teacher} → {student}, CE + (2·L_corr + 1·L_MI) on the pooled features, "
        "the README's per-pair alpha (1.01 same-family, 1.5 cross-family)",
    ),
    "wttm_itrd": (
        ("itrd/{task}", "plus_wttm"),
        True,
        "WTTM+ITRD (Zheng & Yang 2024): {teacher} → {student}, CE + ITRD (ITRD's per-pair alpha) + 4·WTTM "
        "(gamma=0.2): the published WTTM+CRD vgg13→vgg8 WTTM example for every task, not the per-task settings "
        "(paper Appendix A.4, unread); may not reproduce",
    ),
}

CLASSIC = {
    "hint": "FitNet",
    "at": "AT",
    "sp": "SP",
    "cc": "CC",
    "vid": "VID",
    "rkd": "RKD",
    "pkt": "PKT",
    "ab": "AB (with its init stage)",
    "ft": "FT (with its init stage)",
    "fsp": "FSP (with its init stage)",
    "nst": "NST",
}
for _name, _label in CLASSIC.items():
    METHODS[_name] = ((_name,), True, f"{_label}: {{teacher}} → {{student}}, reference weights (CE 1 + β·{_name})")

# DKD's published settings differ per task (beta), so its fragment is per task.
METHODS["dkd"] = (
    ("dkd/{task}",),
    True,
    "DKD (Zhao et al. 2022): {teacher} → {student}, CE + DKD with the authors' per-task settings (mdistiller)",
)

# ReviewKD (Chen et al., CVPR 2021): the loss weight differs per task (the official script/reviewKD.sh; our
# choice, said in the fragment, for the five tasks it omits), so its fragment is per task.
METHODS["reviewkd"] = (
    ("reviewkd/{task}",),
    True,
    "ReviewKD (Chen et al. 2021): {teacher} → {student}, CE + w·ReviewKD (ABF fusion + HCL, 20-epoch warm-up), w "
    "from the official script/reviewKD.sh where it has this task, else our choice (see the fragment); mdistiller's "
    "optimisation",
)

# Logit standardization (Sun et al., CVPR 2024) on KD and DKD: (τ, w) per task from the authors' logs,
# so per-task fragments; three tasks have no published run and get the authors' default (τ 2, w 9).
LS_UNPUBLISHED = ("ResNet50-vgg8", "resnet32x4-ShuffleV1", "wrn_40_2-ShuffleV1")
for _name, _label, _terms in (("kd_ls", "KD+LS", "0.1·CE + w·KD"), ("dkd_ls", "DKD+LS", "CE + DKD with alpha = w, beta = β_cfg·w")):
    METHODS[_name] = (
        (f"{_name}/{{task}}",),
        True,
        f"{_label} (Sun et al. 2024): {{teacher}} → {{student}}, {_terms} on z-scored logits, {{ls_source}}",
    )

# MLKD (Jin et al., CVPR 2023) trains on a weak and a strong view of each image (data.views.shared) for
# 480 or 960 epochs with per-task learning rates (its configs), so its optimisation is a per-task fragment.
# The compute-matched baselines, kd_2view and kd_ls_2view, train KD and KD+LS (their own loss settings)
# on the same two views with the same epochs and learning rates as mlkd and mlkd_ls: the gain of MLKD's
# losses can then be told from the gain of the extra views and epochs (methods-2026.md section 8).
MLKD_NO_CONFIG = ("ResNet50-vgg8",)
MLKD_LS_UNPUBLISHED = ("resnet56-resnet20", "ResNet50-vgg8", "resnet32x4-ShuffleV1", "wrn_40_2-ShuffleV1")
METHODS["mlkd"] = (
    ("mlkd", "views_weak_strong", "mlkd_schedule/{task}"),
    True,
    "MLKD (Jin et al. 2023): {teacher} → {student}, 0.1·CE + 0.9·MLKD on a weak and a strong view, as coded, "
    "{mlkd_source}",
)
METHODS["mlkd_ls"] = (
    ("mlkd_ls/{task}", "views_weak_strong", "mlkd_ls_schedule/{task}"),
    True,
    "MLKD+LS (Sun et al. 2024): {teacher} → {student}, 0.1·CE + w·MLKD (KL terms on z-scored logits) on a weak "
    "and a strong view, {mlkd_ls_source}",
)
METHODS["kd_2view"] = (
    ("kd", "views_weak_strong", "mlkd_schedule/{task}"),
    True,
    "KD on MLKD's two views (compute-matched baseline of mlkd): {teacher} → {student}, 0.1·CE + 0.9·KD (T=4) "
    "on each view, mlkd's epochs and lr",
)
METHODS["kd_ls_2view"] = (
    ("kd_ls/{task}", "views_weak_strong", "mlkd_ls_schedule/{task}"),
    True,
    "KD+LS on MLKD's two views (compute-matched baseline of mlkd_ls): {teacher} → {student}, KD+LS's own (τ, w) "
    "on each view, mlkd_ls's epochs and lr",
)
OWN_LEARNING_RATE = {"mlkd", "mlkd_ls", "kd_2view", "kd_ls_2view"}
"""Methods whose fragments set the learning rate of every task (no reference lr line for small students)."""

# InfoMin-style views (data.views): the teacher keeps the standard view, the student sees a stronger one.
for _name, _label in (("crd", "CRD"), ("ml_cpc", "ML-CPC")):
    METHODS[f"{_name}_infomin"] = (
        (_name, "views_infomin"),
        True,
        f"EXPERIMENTAL {_label} with InfoMin-style views: {{teacher}} (standard view) → {{student}} "
        f"(resized crop, colour jitter, RandAugment, grayscale)",
    )

# FSP compares channel×channel matrices, so it needs equal channel counts in every map:
# the CRD paper reports it as N/A for these tasks (building it fails with that reason).
NOT_APPLICABLE = {"fsp": {task.name for task in TASKS if not task.same_family} | {"wrn_40_2-wrn_40_1"}}

def teacher_fragment(arch: str) -> str:
    return (
        f"# The {arch} teacher, by its name in the teacher manifest (teachers/cifar100.yaml): the\n"
        f"# checkpoint is the published file once fetched ('distill teachers fetch {arch}') or the\n"
        f"# newest run of recipes/cifar100/teachers/{arch}.yaml. teacher.checkpoint=PATH overrides it.\n"
        f"teacher:\n  name: {arch}\n"
    )


def lr_lines(student: str) -> str:
    if student not in SMALL_LR_STUDENTS:
        return ""
    return f"optimizer:\n  lr: 0.01   # the reference's lr for {', '.join(SMALL_LR_STUDENTS)} students\n"


def task_recipe(method: str, teacher: str, student: str) -> str:
    fragments, uses_teacher, template = METHODS[method]
    task = f"{teacher}-{student}"
    bases = ["../_base_/cifar100.yaml", *(f"../_base_/{fragment.format(task=task)}.yaml" for fragment in fragments)]
    if uses_teacher:
        bases.insert(1, f"../_base_/teacher/{teacher}.yaml")
    ls_source = "no published run: the authors' default τ=2, w=9" if task in LS_UNPUBLISHED else "the authors' (τ, w) for this task"
    mlkd_source = (
        "no author config: epochs and lr of the same student's config (our choice)"
        if task in MLKD_NO_CONFIG else "the authors' epochs and lr for this task"
    )
    mlkd_ls_source = (
        "no published run: the authors' default τ=2, w=9" if task in MLKD_LS_UNPUBLISHED else "the authors' (τ, w) for this task"
    )
    description = template.format(
        teacher=teacher, student=student, task=task, ls_source=ls_source, mlkd_source=mlkd_source, mlkd_ls_source=mlkd_ls_source
    )
    return (
        f"_base_: [{', '.join(bases)}]\n"
        f'description: "{description}"\n'
        f"student:\n  arch: {student}\n" + ("" if method in OWN_LEARNING_RATE else lr_lines(student))
    )


def teacher_recipe(arch: str) -> str:
    return (
        "_base_: [../_base_/cifar100.yaml, ../_base_/ce.yaml]\n"
        f'description: "teacher: train {arch} on CIFAR-100 from scratch with CE (reference schedule)"\n'
        f"student:\n  arch: {arch}\n"
        + lr_lines(arch)
        + "# where the teacher manifest (teachers/cifar100.yaml, trained_runs) looks for it\n"
        f"output_dir: teachers/trained/{arch}\n"
    )


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="*", help=f"methods to write (default: all of {', '.join(METHODS)})")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    for arch in TEACHERS:
        write(RECIPES / "_base_" / "teacher" / f"{arch}.yaml", teacher_fragment(arch))
        write(RECIPES / "teachers" / f"{arch}.yaml", teacher_recipe(arch))
    for method in args.methods or list(METHODS):
        for task in TASKS:
            if task.name not in NOT_APPLICABLE.get(method, ()):
                write(RECIPES / method / f"{task.name}.yaml", task_recipe(method, task.teacher, task.student))
    print(f"wrote recipes under {RECIPES}")


if __name__ == "__main__":
    main()
