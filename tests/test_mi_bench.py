"""The MI estimator bench (``distill mi-bench``): the ML-CPC paper's correlated-Gaussian experiment.

What is pinned, on the CPU:

* the closed forms of the toy task (ρ for a target MI, the exact log density ratio);
* the training-free numbers of objectives.md §1.7: the estimators of
  :mod:`distill.losses.contrastive.estimators` scored with the *exact* critic
  (n = 128, d = 20, 50 batches per MI level) reproduce its table;
* every estimator stays under its ceiling on every batch;
* the bench's table calls those very functions (one implementation);
* a short trained staircase shows the paper's qualitative claims;
* the CLI end to end at toy size, and its answers to bad input.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from distill.cli.main import EXIT_USER_ERROR, main
from distill.errors import UnknownNameError
from distill.losses.contrastive import estimators as loss_estimators
from distill.mi_bench import (
    ESTIMATORS,
    BenchConfig,
    MIBenchError,
    log_density_ratio,
    mi_to_rho,
    pairwise_logits,
    parse_estimator,
    rho_to_mi,
    run_bench,
    sample_correlated_gaussians,
    staircase,
)
from distill.mi_bench.bench import CSV_COLUMNS, ema, level_estimates
from distill.mi_bench.critics import CriticShape, build_critic

N = 128
DIM = 20
BATCHES = 50
LOG_N = math.log(N)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- closed forms


@pytest.mark.parametrize(
    ("mi", "rho"), [(2.0, 0.4258), (4.0, 0.5742), (6.0, 0.6717), (8.0, 0.7421), (10.0, 0.7951)]
)
def test_rho_for_a_target_mi_matches_the_reference_table(mi, rho):
    assert mi_to_rho(mi, DIM) == pytest.approx(rho, abs=5e-5)
    assert rho_to_mi(mi_to_rho(mi, DIM), DIM) == pytest.approx(mi, rel=1e-12)
    assert mi_to_rho(0.0, DIM) == 0.0


def test_the_exact_log_ratio_averages_to_the_true_mi_on_pairs_and_to_one_in_exp_on_non_pairs():
    generator = torch.Generator().manual_seed(0)
    for mi in (2.0, 6.0):
        rho = mi_to_rho(mi, DIM)
        diagonal, off_diagonal_ratio = [], []
        for _ in range(40):
            x, y = sample_correlated_gaussians(N, DIM, rho, generator, dtype=torch.float64)
            log_r = pairwise_logits(log_density_ratio(x, y, rho))
            diagonal.append(log_r[:, 0].mean().item())
            off_diagonal_ratio.append(log_r[:, 1:].exp().mean().item())
        # E_p[log r] = I: the sd of one pair's log r is sqrt(2I)-ish, so the standard error is ~0.02-0.04.
        assert statistics.mean(diagonal) == pytest.approx(mi, abs=0.1)
        if mi == 2.0:  # E_q[r] = 1 (its variance e^{2I} − 1 makes it a useful check only at low MI)
            assert statistics.mean(off_diagonal_ratio) == pytest.approx(1.0, abs=0.05)


def test_the_cubic_variant_has_the_same_log_ratio_as_the_gaussian_it_came_from():
    generator = torch.Generator().manual_seed(1)
    rho = mi_to_rho(4.0, DIM)
    x, y = sample_correlated_gaussians(16, DIM, rho, generator, dtype=torch.float64)
    torch.testing.assert_close(log_density_ratio(x, y**3, rho, cubic=True), log_density_ratio(x, y, rho))
    generator = torch.Generator().manual_seed(1)
    _, y_cubed = sample_correlated_gaussians(16, DIM, rho, generator, cubic=True, dtype=torch.float64)
    torch.testing.assert_close(y_cubed, y**3)


def test_the_staircase_has_equal_blocks_in_order():
    schedule = staircase((2.0, 4.0, 6.0, 8.0, 10.0), 20_000)
    assert len(schedule) == 20_000
    assert [schedule.count(level) for level in (2.0, 4.0, 6.0, 8.0, 10.0)] == [4000] * 5
    assert schedule == sorted(schedule)
    assert staircase((1.0, 3.0), 5) == [1.0, 1.0, 1.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="at least one step per level"):
        staircase((1.0, 2.0, 3.0), 2)


def test_pairwise_logits_moves_the_diagonal_to_column_zero_and_keeps_each_row():
    scores = torch.arange(25.0).reshape(5, 5)
    logits = pairwise_logits(scores)
    torch.testing.assert_close(logits[:, 0], scores.diagonal())
    for i in range(5):
        assert sorted(logits[i].tolist()) == sorted(scores[i].tolist())
        assert scores[i, i].item() not in logits[i, 1:].tolist()


# ----------------------------------------------------------------- the estimators: one implementation


def test_the_bench_table_points_at_the_loss_functions_themselves():
    assert ESTIMATORS.get("cpc").bound is loss_estimators.cpc_bound
    assert ESTIMATORS.get("ml-cpc").bound is loss_estimators.ml_cpc_bound
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0))
    assert parse_estimator("nwj").bound(logits).item() == loss_estimators.nwj_bound(logits).item()
    # CRD's NCE bound is log K minus CRD's loss with h = e^s / (e^s + K).
    expected = math.log(5) - loss_estimators.nce_loss(logits, 0.0, 1).item()
    assert parse_estimator("nce").bound(logits).item() == pytest.approx(expected, abs=1e-6)


def test_nwj_bound_is_the_nwj_formula_on_column_zero_positives():
    logits = torch.randn(7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    expected = logits[:, 0].mean() - (logits[:, 1:] - 1).exp().mean()
    torch.testing.assert_close(loss_estimators.nwj_bound(logits), expected)
    assert loss_estimators.nwj_bound(logits.half()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"shape \[B, M\]"):
        loss_estimators.nwj_bound(torch.zeros(4))


def test_estimator_names_parse_to_canonical_specs():
    assert parse_estimator("cpc").name == "cpc" and parse_estimator("cpc").label == "CPC"
    assert parse_estimator("cpc:1").name == "cpc"
    assert parse_estimator("infonce:0.5").name == "cpc:0.5"  # InfoNCE is CPC
    spec = parse_estimator(" ml-cpc:0.010 ")
    assert (spec.name, spec.alpha, spec.label) == ("ml-cpc:0.01", 0.01, "α-ML-CPC (α=0.01)")
    assert spec.ceiling(N) == pytest.approx(math.log(N / 0.01))
    assert spec.is_lower_bound(N, N) and not parse_estimator("ml-cpc:0.001").is_lower_bound(N, N)
    assert not parse_estimator("cpc:0.01").is_lower_bound(N, N)
    with pytest.raises(UnknownNameError, match="Did you mean 'ml-cpc'"):
        parse_estimator("ml-cpcc")
    with pytest.raises(MIBenchError, match="takes no α"):
        parse_estimator("nwj:0.1")
    with pytest.raises(MIBenchError, match="positive"):
        parse_estimator("ml-cpc:0")
    with pytest.raises(MIBenchError, match="must be a number"):
        parse_estimator("cpc:abc")


# ----------------------------------------------------------------- training-free numbers (objectives.md §1.7)


@pytest.fixture(scope="module")
def exact_log_ratios() -> dict[float, list[torch.Tensor]]:
    """For I = 2, 6, 10 nats: 50 batches of the exact log ratio in [n, n] logits layout (float64)."""
    generator = torch.Generator().manual_seed(0)
    batches = {}
    for mi in (2.0, 6.0, 10.0):
        rho = mi_to_rho(mi, DIM)
        batches[mi] = []
        for _ in range(BATCHES):
            x, y = sample_correlated_gaussians(N, DIM, rho, generator, dtype=torch.float64)
            batches[mi].append(pairwise_logits(log_density_ratio(x, y, rho)))
    return batches


def _optimal_estimates(name: str, log_ratios: list[torch.Tensor]) -> tuple[float, float]:
    """Mean and standard error over batches of estimator ``name`` with its optimal critic."""
    spec = parse_estimator(name)
    values = [spec.bound(spec.optimal_logits(log_r)).item() for log_r in log_ratios]
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def test_cpc_with_the_exact_critic_stays_under_log_n_at_10_nats(exact_log_ratios):
    mean, _ = _optimal_estimates("cpc", exact_log_ratios[10.0])
    assert mean < LOG_N
    assert mean == pytest.approx(4.79, abs=0.05)  # the table's value


def test_alpha_ml_cpc_with_its_optimal_critic_beats_log_n_yet_stays_under_the_truth(exact_log_ratios):
    mean, stderr = _optimal_estimates("ml-cpc:0.01", exact_log_ratios[10.0])
    assert LOG_N + 2 < mean - 3 * stderr and mean + 3 * stderr < 10.0
    assert mean == pytest.approx(8.17, abs=0.15)  # the table's value


def test_alpha_cpc_overshoots_the_true_mi_so_it_is_no_bound(exact_log_ratios):
    mean, stderr = _optimal_estimates("cpc:0.01", exact_log_ratios[6.0])
    assert mean - 3 * stderr > 6.0
    assert mean == pytest.approx(6.55, abs=0.15)  # the table's value


@pytest.mark.parametrize("mi", [2.0, 6.0, 10.0])
def test_nwj_with_its_optimal_critic_is_unbiased(exact_log_ratios, mi):
    mean, stderr = _optimal_estimates("nwj", exact_log_ratios[mi])
    assert abs(mean - mi) < 4 * stderr + 0.02


def test_crd_nce_with_its_optimal_critic_is_a_loose_bound_under_log_k(exact_log_ratios):
    for mi, log_r in exact_log_ratios.items():
        mean, stderr = _optimal_estimates("nce", log_r)
        assert mean + 3 * stderr < min(mi, math.log(N - 1))
    assert _optimal_estimates("nce", exact_log_ratios[2.0])[0] == pytest.approx(0.9, abs=0.1)  # about 1 nat below


CEILING_ESTIMATORS = ("cpc", "cpc:0.01", "cpc:0.001", "ml-cpc", "ml-cpc:0.1", "ml-cpc:0.01", "ml-cpc:0.00787", "ml-cpc:0.001", "nce")


def test_every_estimator_stays_under_its_ceiling_on_every_batch(exact_log_ratios):
    generator = torch.Generator().manual_seed(3)
    for name in CEILING_ESTIMATORS:
        spec = parse_estimator(name)
        ceiling = spec.ceiling(N)
        for log_ratios in exact_log_ratios.values():
            for log_r in log_ratios:
                for logits in (log_r, spec.optimal_logits(log_r), 50.0 * log_r.float()):
                    assert spec.bound(logits).item() <= ceiling, name
        # a critic that puts every positive (all equal) far above every negative reaches the ceiling, never more
        separated = torch.randn(N, N, generator=generator) - 50.0
        separated[:, 0] = 50.0
        assert spec.bound(separated).item() <= ceiling
        assert spec.bound(separated).item() == pytest.approx(ceiling, abs=1e-3)
    assert parse_estimator("nwj").ceiling(N) == math.inf


# ----------------------------------------------------------------- a trained staircase


@pytest.mark.slow
def test_trained_critics_show_the_papers_claims():
    """Separable critics up a 2 → 6 → 10 nat staircase (500 steps per level, batch 128).

    The critic is narrower than the paper's (hidden 128, one extra hidden layer
    instead of two) so that it learns the high levels in a few hundred steps on
    a CPU: the claims are about the estimators, not the critic.
    """
    config = BenchConfig(
        steps=1500, levels=(2.0, 6.0, 10.0), estimators=("cpc", "ml-cpc:0.01"), hidden=128, layers=1, seed=0, device="cpu"
    )
    result = run_bench(config, progress=False)
    cpc, ml_cpc = (level_estimates(curve.estimates, result.true_mi) for curve in result.curves)
    # CPC flattens under log n: the true MI is 10, the estimate sticks just below log 128 = 4.85.
    assert LOG_N - 0.5 < cpc[10.0] < LOG_N
    # α-ML-CPC (α = 0.01 ≥ α*) rises well above log n ...
    assert ml_cpc[10.0] > LOG_N + 1.0
    # ... and stays under the truth at every level (0.1 nat: the noise of a level's mean).
    for level, estimate in ml_cpc.items():
        assert estimate < level + 0.1
    assert all(curve.skipped_steps == 0 for curve in result.curves)


def test_a_bench_run_is_deterministic_for_a_seed():
    config = BenchConfig(steps=8, batch_size=16, levels=(2.0, 4.0), estimators=("ml-cpc:0.1", "nwj"), critics=("separable", "joint"), device="cpu")
    first, second = run_bench(config, progress=False), run_bench(config, progress=False)
    assert [c.estimates for c in first.curves] == [c.estimates for c in second.curves]
    other_seed = run_bench(replace(config, seed=1), progress=False)
    assert [c.estimates for c in other_seed.curves] != [c.estimates for c in first.curves]


def test_critics_are_seeded_without_touching_the_global_rng():
    state = torch.random.get_rng_state()
    a = build_critic("joint", CriticShape(dim=3, hidden=8, embed=4, layers=1), seed=5)
    b = build_critic("joint", CriticShape(dim=3, hidden=8, embed=4, layers=1), seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    pairs = torch.cat((x.unsqueeze(1).expand(4, 4, 3), y.unsqueeze(0).expand(4, 4, 3)), dim=2)
    torch.testing.assert_close(a(x, y), a.f(pairs).squeeze(2))  # S[i, j] = f([x_i, y_j])


def test_ema_is_the_bias_corrected_moving_average_and_skips_non_finite_values():
    assert ema([0.0, 1.0], span=3) == pytest.approx([0.0, 1.0 / 1.5])
    assert ema([2.0] * 5, span=10) == pytest.approx([2.0] * 5)
    smoothed = ema([1.0, math.nan, 1.0, -math.inf], span=4)
    assert smoothed == pytest.approx([1.0, 1.0, 1.0, 1.0])


# ----------------------------------------------------------------- the CLI


TOY = ["--steps", "6", "--batch-size", "8", "--levels", "1,3", "--critics", "separable,joint", "--estimators", "cpc,ml-cpc:0.1,nwj,nce", "--device", "cpu"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.e2e
def test_cli_end_to_end_writes_the_csv_the_summary_and_the_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    assert main(["mi-bench", "--output", str(out), *TOY]) == 0
    stdout = capsys.readouterr().out
    rows = _read_csv(out / "mi_bench.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 6 * 4 * 2
    assert {(row["critic"], row["estimator"]) for row in rows} == {
        (critic, name) for critic in ("separable", "joint") for name in ("cpc", "ml-cpc:0.1", "nwj", "nce")
    }
    assert [float(row["true_mi"]) for row in rows[:6]] == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    summary = json.loads((out / "mi_bench.json").read_text())
    assert summary["log_n"] == pytest.approx(math.log(8)) and len(summary["curves"]) == 8
    assert (out / "mi_bench.png").read_bytes()[:8] == PNG_MAGIC
    assert "log n = 2.08" in stdout and "α-ML-CPC (α=0.1)" in stdout and f"wrote {out / 'mi_bench.png'}" in stdout

    (out / "mi_bench.png").unlink()
    assert main(["mi-bench", "--replot", "--output", str(out)]) == 0
    assert (out / "mi_bench.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.e2e
def test_cli_without_matplotlib_writes_the_csv_and_says_how_to_get_the_figure(tmp_path, capsys, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    out = tmp_path / "bench"
    toy = ["--steps", "4", "--batch-size", "8", "--levels", "1,3", "--critics", "separable", "--estimators", "cpc", "--device", "cpu"]
    assert main(["mi-bench", "-o", str(out), *toy]) == 0
    stdout = capsys.readouterr().out
    assert "pip install 'distill[plots]'" in stdout and f"distill mi-bench --replot --output {out}" in stdout
    assert (out / "mi_bench.csv").is_file() and not (out / "mi_bench.png").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimators", "cpc,ml-cpcc"], "unknown MI estimator 'ml-cpcc'. Did you mean 'ml-cpc'"),
        (["--estimators", "nwj:0.5"], "nwj takes no α"),
        (["--estimators", "cpc:200"], "α must lie in (0, M]"),
        (["--critics", "seperable"], "unknown critic 'seperable'. Did you mean 'separable'"),
        (["--steps", "3"], "--steps 3 cannot cover 5 MI levels"),
        (["--levels", "2,four"], "--levels '2,four'"),
        (["--levels", "-1"], "MI level -1.0"),
        (["--batch-size", "1"], "--batch-size must be ≥ 2"),
        (["--device", "nonsense"], "device 'nonsense' cannot be used here"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bench"
    assert main(["mi-bench", "--output", str(out), *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("distill mi-bench: error: ")
    assert not out.exists()


@pytest.mark.e2e
def test_cli_replot_without_a_result_exits_2(tmp_path, capsys):
    assert main(["mi-bench", "--replot", "--output", str(tmp_path)]) == EXIT_USER_ERROR
    assert "run `distill mi-bench --output" in capsys.readouterr().err
