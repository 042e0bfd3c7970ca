"""ITRD (Miles et al., BMVC 2022): both terms against explicit loops and hand cases, the shared projection,
which student features the MI term sees, gradients, half precision, bad options, and runs through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import run_distill, tiny_pair_overrides

from distill.cli.main import main
from distill.engine.metrics import read_metrics
from distill.losses import Batch, LossContext, build_loss
from distill.losses.itrd import itrd_correlation, itrd_mutual_information
from distill.models.features import FeatureRecord, FeatureShapes

REPO = Path(__file__).resolve().parent.parent
TASK = "resnet32x4-resnet8x4"


# --- independent computations: plain Python loops over numpy arrays ---------------------------


def loop_correlation(s: np.ndarray, t: np.ndarray, alpha: float) -> float:
    """log2 Σ_k ((c_k − 1)²)^α with c_k the mean over b of the z-scored (unbiased std) columns."""
    batch, dims = s.shape
    total = 0.0
    for k in range(dims):
        ms, mt = sum(s[:, k]) / batch, sum(t[:, k]) / batch
        ss = math.sqrt(sum((v - ms) ** 2 for v in s[:, k]) / (batch - 1))
        st = math.sqrt(sum((v - mt) ** 2 for v in t[:, k]) / (batch - 1))
        c = sum((s[b, k] - ms) / ss * (t[b, k] - mt) / st for b in range(batch)) / batch
        total += ((c - 1) ** 2) ** alpha
    return math.log2(total)


def loop_gram(x: np.ndarray) -> list[list[float]]:
    rows = [row / math.sqrt(sum(v * v for v in row)) for row in x]
    return [[sum(a * b for a, b in zip(r1, r2)) for r2 in rows] for r1 in rows]


def loop_mutual_information(s: np.ndarray, t: np.ndarray) -> float:
    """Σ (G_s/tr G_s)² − Σ (G_st/tr G_st)², G_st = G_s ⊙ G_t, G of the unit rows."""
    gs, gt = loop_gram(s), loop_gram(t)
    batch = len(gs)
    gst = [[gs[i][j] * gt[i][j] for j in range(batch)] for i in range(batch)]
    trace_s, trace_st = sum(gs[i][i] for i in range(batch)), sum(gst[i][i] for i in range(batch))
    return sum((gs[i][j] / trace_s) ** 2 - (gst[i][j] / trace_st) ** 2 for i in range(batch) for j in range(batch))


# --- helpers ------------------------------------------------------------------------------------


def shapes(dim: int) -> FeatureShapes:
    return FeatureShapes(maps=[], preact_maps=[], pooled=(dim,), logits=(5,))


def context(student_dim: int, teacher_dim: int) -> LossContext:
    return LossContext(
        student=shapes(student_dim), teacher=shapes(teacher_dim), num_classes=5, dataset_size=8,
        labels=torch.zeros(8, dtype=torch.long),
    )  # fmt: skip


def record(pooled: torch.Tensor) -> FeatureRecord:
    return FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(pooled.shape[0], 5))


def batch(n: int) -> Batch:
    return Batch(inputs=torch.zeros(n, 3), labels=torch.zeros(n, dtype=torch.long), indices=torch.arange(n))


def itrd(student_dim: int, teacher_dim: int, **params):
    torch.manual_seed(0)
    return build_loss("itrd", context(student_dim, teacher_dim), params).double()


# --- the two terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.01, 1.5])
def test_correlation_against_a_loop(alpha):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 0.5 * rng.normal(size=(7, 4))
    value = itrd_correlation(torch.from_numpy(s), torch.from_numpy(t), alpha)
    assert value.item() == pytest.approx(loop_correlation(s, t, alpha), abs=1e-12)


@pytest.mark.parametrize("alpha", [1.01, 1.5])
def test_correlation_hand_cases(alpha):
    # Two samples, one dimension: each z-scored column is (±1/√2) (unbiased std), so c = ±1/2.
    s = torch.tensor([[3.0], [1.0]], dtype=torch.float64)
    same, opposite = torch.tensor([[10.0], [4.0]], dtype=torch.float64), torch.tensor([[4.0], [10.0]], dtype=torch.float64)
    assert itrd_correlation(s, same, alpha).item() == pytest.approx(-2 * alpha, abs=1e-12)  # log2((1/4)^α)
    assert itrd_correlation(s, opposite, alpha).item() == pytest.approx(2 * alpha * math.log2(1.5), abs=1e-12)


@pytest.mark.parametrize("alpha", [1.01, 1.5])
def test_a_dimension_constant_over_the_batch_counts_as_uncorrelated_instead_of_nan(alpha):
    # A teacher channel dead (0 after ReLU) on every image of the batch: the reference's 0/0 gives NaN
    # and ends the run; here its c_k is 0, adding (0 − 1)^(2α) = 1 to the sum; the other columns as coded.
    rng = np.random.default_rng(9)
    s, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    t[:, 2] = 0.0
    live = [0, 1, 3]
    expected = math.log2(2 ** loop_correlation(s[:, live], t[:, live], alpha) + 1.0)
    assert itrd_correlation(torch.from_numpy(s), torch.from_numpy(t), alpha).item() == pytest.approx(expected, abs=1e-12)
    s[:, 0] = 3.0  # a constant student column too: finite value and gradients
    student = torch.from_numpy(s).requires_grad_()
    value = itrd_correlation(student, torch.from_numpy(t), alpha)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(student.grad).all()


def test_mutual_information_against_a_loop_with_different_dims():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    value = itrd_mutual_information(torch.from_numpy(s), torch.from_numpy(t))
    assert value.item() == pytest.approx(loop_mutual_information(s, t), abs=1e-12)


def test_mutual_information_hand_case_and_its_row_scale_invariance():
    # Rows (1,0) and (1,1): cosine 1/√2, so G = [[1, .707], [.707, 1]]; the same for both networks:
    # Σ G² = 3, Σ G⁴ = 2.5, both traces 2: L = (3 − 2.5) / 4 = 1/8. Not 0: equal features are not its minimum.
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert itrd_mutual_information(s, s).item() == pytest.approx(0.125, abs=1e-12)
    scaled_s = torch.tensor([[3.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    scaled_t = torch.tensor([[0.5, 0.0], [5.0, 5.0]], dtype=torch.float64)
    assert itrd_mutual_information(scaled_s, scaled_t).item() == pytest.approx(0.125, abs=1e-12)


def test_mutual_information_is_zero_where_the_identity_says_and_positive_elsewhere():
    # |G_t| ≤ 1 entrywise and both traces equal B, so L ≥ 0; it is 0 when the student's rows are
    # orthogonal (G_s = I) or when the teacher's rows are all parallel (G_t = ±1 everywhere).
    rng = np.random.default_rng(2)
    teacher = torch.from_numpy(rng.normal(size=(4, 6)))
    orthogonal = torch.eye(4, 5, dtype=torch.float64) * torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    assert itrd_mutual_information(orthogonal, teacher).item() == pytest.approx(0.0, abs=1e-15)
    parallel = torch.tensor([[1.0, 2.0]], dtype=torch.float64) * torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    student = torch.from_numpy(rng.normal(size=(4, 3)))
    assert itrd_mutual_information(student, parallel).item() == pytest.approx(0.0, abs=1e-15)
    assert itrd_mutual_information(student, teacher).item() > 0


# --- the loss module ----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.01, 1.5])
def test_the_module_projects_once_for_both_terms_when_the_dims_differ(alpha):
    loss = itrd(3, 5, alpha=alpha, corr_weight=2.0, mi_weight=1.0)
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(8, 3)), rng.normal(size=(8, 5))
    w, b = loss.projection.weight.detach().numpy(), loss.projection.bias.detach().numpy()
    projected = np.array([[sum(w[o, i] * row[i] for i in range(3)) + b[o] for o in range(5)] for row in s])
    expected = 2.0 * loop_correlation(projected, t, alpha) + 1.0 * loop_mutual_information(projected, t)
    value = loss(record(torch.from_numpy(s)), record(torch.from_numpy(t)), batch(8))
    assert value.item() == pytest.approx(expected, abs=1e-10)


def test_with_equal_dims_the_mi_term_sees_the_raw_student_as_coded_and_the_projected_one_if_asked():
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
    for mi_projection in ("code", "always"):
        loss = itrd(4, 4, alpha=1.01, mi_projection=mi_projection)
        w, b = loss.projection.weight.detach().numpy(), loss.projection.bias.detach().numpy()
        projected = s @ w.T + b
        mi_input = s if mi_projection == "code" else projected
        expected = 2.0 * loop_correlation(projected, t, 1.01) + loop_mutual_information(mi_input, t)
        value = loss(record(torch.from_numpy(s)), record(torch.from_numpy(t)), batch(8))
        assert value.item() == pytest.approx(expected, abs=1e-10), mi_projection


def test_mi_weight_zero_leaves_the_correlation_alone():
    rng = np.random.default_rng(5)
    s, t = torch.from_numpy(rng.normal(size=(8, 3))), torch.from_numpy(rng.normal(size=(8, 5)))
    loss = itrd(3, 5, alpha=1.5, corr_weight=1.0, mi_weight=0.0)
    assert loss(record(s), record(t), batch(8)).item() == pytest.approx(itrd_correlation(loss.projection(s), t, 1.5).item(), abs=1e-12)


@pytest.mark.parametrize("dims", [(3, 5), (4, 4)], ids=["dims-differ", "dims-equal"])
def test_gradients_reach_the_student_and_the_projection_never_the_teacher(dims):
    loss = itrd(*dims)
    torch.manual_seed(6)
    s = torch.randn(8, dims[0], dtype=torch.float64, requires_grad=True)
    t = torch.randn(8, dims[1], dtype=torch.float64, requires_grad=True)
    loss(record(s), record(t), batch(8)).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert loss.projection.weight.grad.abs().sum() > 0 and loss.projection.bias.grad.abs().sum() > 0
    assert {id(p) for p in loss.trainable_parameters()} == {id(loss.projection.weight), id(loss.projection.bias)}


def test_with_equal_dims_the_projection_learns_from_the_correlation_alone():
    loss = itrd(4, 4, mi_weight=1.0)
    torch.manual_seed(7)
    s, t = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    loss(record(s), record(t), batch(8)).backward()
    full = loss.projection.weight.grad.clone()
    loss.zero_grad()
    (2.0 * itrd_correlation(loss.projection(s), t, 1.01)).backward()
    assert torch.allclose(full, loss.projection.weight.grad, atol=1e-14)


def test_half_precision_input_is_computed_in_float32_and_stays_finite():
    torch.manual_seed(8)
    s, t = (torch.randn(16, 3) * 30).half(), (torch.randn(16, 5) * 30).half()
    for value in (itrd_correlation(s[:, :1].repeat(1, 5) + t, t, 1.5), itrd_mutual_information(s, t)):
        assert value.dtype == torch.float32 and torch.isfinite(value)
    loss = build_loss("itrd", context(3, 5), {"alpha": 1.5})
    value = loss(record(s), record(t.bfloat16()), batch(16))
    assert value.dtype == torch.float32 and torch.isfinite(value)
    exact = loss(record(s.float()), record(t.bfloat16().float()), batch(16))
    assert value.item() == pytest.approx(exact.item(), abs=1e-6)


def test_a_batch_of_one_gives_zero_connected_to_the_projection():
    loss = itrd(3, 5)
    value = loss(record(torch.randn(1, 3, dtype=torch.float64)), record(torch.randn(1, 5, dtype=torch.float64)), batch(1))
    value.backward()
    assert value.item() == 0.0 and loss.projection.weight.grad is not None


@pytest.mark.parametrize(
    "params, phrase",
    [
        ({"alpha": 0.0}, "alpha .* must be positive"),
        ({"alpha": -1.5}, "alpha .* must be positive"),
        ({"corr_weight": -1.0}, "corr_weight must be 0 or more"),
        ({"mi_weight": -0.05}, "mi_weight must be 0 or more"),
        ({"mi_projection": "sometimes"}, "mi_projection must be 'code' or 'always'"),
    ],
)
def test_bad_options_are_refused(params, phrase):
    with pytest.raises(ValueError, match=phrase):
        build_loss("itrd", context(3, 5), params)


def test_the_pure_functions_refuse_mismatched_or_too_small_batches():
    with pytest.raises(ValueError, match="same shape"):
        itrd_correlation(torch.randn(4, 3), torch.randn(4, 5), 1.5)
    with pytest.raises(ValueError, match="same B"):
        itrd_mutual_information(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        itrd_correlation(torch.randn(1, 3), torch.randn(1, 3), 1.5)


# --- the recipes --------------------------------------------------------------------------------


def test_the_recipes_carry_the_readme_alpha_per_family():
    from distill.benchmark.tasks import TASKS
    from distill.recipe.load import load_recipe

    for method in ("itrd", "wttm_itrd"):
        for task in TASKS:
            recipe = load_recipe(REPO / f"recipes/cifar100/{method}/{task.name}.yaml")
            params = recipe.losses["itrd"].params
            assert params == {"alpha": 1.01 if task.same_family else 1.5, "corr_weight": 2.0, "mi_weight": 1.0}, task.name
            assert recipe.losses["itrd"].weight == 1.0 and recipe.losses["ce"].weight == 1.0
            assert ("wttm" in recipe.losses) == (method == "wttm_itrd")
            if method == "wttm_itrd":
                assert recipe.losses["wttm"].weight == 4.0 and recipe.losses["wttm"].params == {"gamma": 0.2}


# --- through the CLI ----------------------------------------------------------------------------


CLI_CASES = {"itrd": {"ce": 1.0, "itrd": 1.0}, "wttm_itrd": {"ce": 1.0, "itrd": 1.0, "wttm": 4.0}}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("method", list(CLI_CASES))
def test_one_epoch_through_the_cli(method, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / method
    recipe = REPO / f"recipes/cifar100/{method}/{TASK}.yaml"
    assert main(["train", str(recipe), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir), "--no-tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "loss itrd: " in out and "alpha=1.01" in out and "on the raw student" in out  # resnet8 and resnet14: 64 dims each
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    weights = CLI_CASES[method]
    for name in weights:
        assert math.isfinite(row[f"train/loss/{name}"]), name
    assert row["train/loss/total"] == pytest.approx(sum(w * row[f"train/loss/{name}"] for name, w in weights.items()), rel=1e-5)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_bad_option_ends_the_cli_with_status_two_and_one_line(fake_cifar100, tiny_teacher, tmp_path, capsys):
    recipe = REPO / f"recipes/cifar100/itrd/{TASK}.yaml"
    args = ["train", str(recipe), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "losses.itrd.alpha=0", "--run-dir", str(tmp_path / "bad")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "losses.itrd" in err and "alpha" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.e2e
def test_one_epoch_of_itrd_on_two_processes(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "itrd"
    recipe = REPO / "recipes" / "cifar100" / "itrd" / f"{TASK}.yaml"
    result = run_distill("train", str(recipe), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "data.batch_size=32",
                         "--run-dir", str(run_dir), processes=2, port=29582)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 process(es)" in (run_dir / "log.txt").read_text(encoding="utf-8")
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    assert math.isfinite(row["train/loss/itrd"])
    assert row["train/loss/total"] == pytest.approx(row["train/loss/ce"] + row["train/loss/itrd"], rel=1e-5)


def test_the_summary_line_names_the_weights_what_the_mi_term_sees_and_the_projection():
    """The trainer logs it after ``loss itrd: `` (so it does not repeat the name)."""
    assert itrd(6, 4, alpha=1.5).summary() == (
        "2.0·L_corr (alpha=1.5) + 1.0·L_MI on the projected student; projection Linear(6 → 4)"
    )
    assert "on the raw student (dims agree, as the reference)" in itrd(4, 4).summary()
