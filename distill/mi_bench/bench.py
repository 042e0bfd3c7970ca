"""The bench itself: train one critic per (critic type, estimator) up the MI staircase; write the CSV.

Each critic is trained by maximising its estimator's bound (Adam, lr 5e-4, as in
objectives.md §1.7) on fresh batches of correlated Gaussians while the true MI
climbs the staircase. The bound's value on each training batch is the recorded
estimate, as in the paper's MI figures (Song & Ermon, NeurIPS 2020): the
estimate is measured on the batch before the update it drives.

Every run of one critic type starts from the same initial weights and sees the
same batches (both drawn from ``seed``), so the curves differ only by their
estimator: common random numbers.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from distill.mi_bench.critics import CRITICS, CriticShape, build_critic
from distill.mi_bench.errors import MIBenchError
from distill.mi_bench.estimators import DEFAULT_ESTIMATORS, EstimatorSpec, pairwise_logits, parse_estimator, parse_estimators
from distill.mi_bench.gaussians import PAPER_DIM, PAPER_LEVELS, mi_to_rho, sample_correlated_gaussians, staircase

__all__ = [
    "CSV_COLUMNS",
    "PAPER",
    "QUICK",
    "BenchConfig",
    "BenchResult",
    "Curve",
    "ema",
    "level_estimates",
    "read_results",
    "resolve_device",
    "run_bench",
    "write_results",
]

CSV_COLUMNS = ("step", "true_mi", "estimator", "critic", "estimate", "smoothed")
PAPER_EMA_SPAN = 200
"""The smoothing of the reference notebooks' plots (an exponential moving average, span 200)."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines a bench run. The defaults are the quick CPU setting."""

    steps: int = 2000
    batch_size: int = 128
    levels: tuple[float, ...] = PAPER_LEVELS
    dim: int = PAPER_DIM
    cubic: bool = False
    critics: tuple[str, ...] = ("separable",)
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    lr: float = 5e-4
    hidden: int = 256
    embed: int = 32
    layers: int = 2
    smoothing: int = 0
    """EMA span of the smoothed curves; 0: min(200, steps per level // 10)."""
    seed: int = 0
    device: str = "cpu"

    @property
    def steps_per_level(self) -> int:
        return self.steps // len(self.levels)

    @property
    def ema_span(self) -> int:
        if self.smoothing > 0:
            return self.smoothing
        return max(1, min(PAPER_EMA_SPAN, self.steps_per_level // 10))

    @property
    def shape(self) -> CriticShape:
        return CriticShape(dim=self.dim, hidden=self.hidden, embed=self.embed, layers=self.layers)

    def specs(self) -> list[EstimatorSpec]:
        return parse_estimators(self.estimators)

    def validate(self) -> None:
        """Raise :class:`MIBenchError` (or ``UnknownNameError``) naming the first bad setting."""
        if not self.levels:
            raise MIBenchError("no MI level given; e.g. --levels 2,4,6,8,10")
        for level in self.levels:
            if not (math.isfinite(level) and level >= 0):
                raise MIBenchError(f"MI level {level!r} is not a finite number of nats ≥ 0")
        if self.steps < len(self.levels):
            raise MIBenchError(
                f"--steps {self.steps} cannot cover {len(self.levels)} MI levels: give at least one step per level"
            )
        if self.batch_size < 2:
            raise MIBenchError(f"--batch-size must be ≥ 2 (each positive needs an in-batch negative), got {self.batch_size}")
        if self.dim < 1 or self.hidden < 1 or self.embed < 1 or self.layers < 0:
            raise MIBenchError("dim, hidden and embed must be ≥ 1 and layers ≥ 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MIBenchError(f"the learning rate must be a positive number, got {self.lr!r}")
        if not self.critics:
            raise MIBenchError(f"no critic given; choose from {', '.join(CRITICS)}")
        for critic in self.critics:
            CRITICS.get(critic)
        if len(set(self.critics)) != len(self.critics):
            raise MIBenchError(f"a critic is given more than once: {', '.join(self.critics)}")
        for spec in self.specs():
            if spec.alpha > self.batch_size:
                raise MIBenchError(
                    f"estimator {spec.name!r}: α must lie in (0, M] with M = batch size = {self.batch_size} candidates"
                )


QUICK = BenchConfig()
"""2,000 steps (400 per level), the separable critic: a few minutes on one CPU core."""

PAPER = replace(QUICK, steps=20_000, batch_size=128, critics=("separable", "joint"), smoothing=PAPER_EMA_SPAN)
"""The paper's setting: 20,000 steps (4,000 per level), batch 128, both critics (objectives.md §1.7)."""


@dataclass
class Curve:
    """One trained critic's record: the bound on each training batch, raw and smoothed."""

    critic: str
    estimator: EstimatorSpec
    estimates: list[float]
    smoothed: list[float]
    skipped_steps: int = 0
    """Steps whose bound was not finite: recorded as such, with no update of the critic."""
    seconds: float = 0.0


@dataclass
class BenchResult:
    """The schedule and every curve of a bench run."""

    config: BenchConfig
    true_mi: list[float]
    curves: list[Curve] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` (the accelerator torch sees, else the CPU) or a torch device string that works here."""
    if name == "auto":
        if hasattr(torch, "accelerator") and torch.accelerator.is_available():
            return torch.device(torch.accelerator.current_accelerator())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MIBenchError(f"device {name!r} cannot be used here ({first}); use --device cpu or --device auto") from None
    return device


def ema(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average with weight a = 2/(span + 1), bias-corrected (pandas ``ewm(span).mean()``).

    The reference notebooks smooth their curves this way with span 200.
    Non-finite values are left out (the average carries on over them, and is NaN
    until the first finite value).
    """
    if span < 1:
        raise ValueError(f"span must be ≥ 1, got {span}")
    decay = 1.0 - 2.0 / (span + 1.0)
    total, weight, out = 0.0, 0.0, []
    for value in values:
        total *= decay
        weight *= decay
        if math.isfinite(value):
            total += value
            weight += 1.0
        out.append(total / weight if weight > 0 else math.nan)
    return out


def level_estimates(estimates: Sequence[float], true_mi: Sequence[float]) -> dict[float, float]:
    """Per MI level, the mean finite estimate over the second half of its steps (once the critic has adapted)."""
    by_level: dict[float, list[float]] = {}
    for value, level in zip(estimates, true_mi):
        by_level.setdefault(level, []).append(value)
    out = {}
    for level, values in by_level.items():
        tail = [v for v in values[len(values) // 2 :] if math.isfinite(v)]
        out[level] = sum(tail) / len(tail) if tail else math.nan
    return out


def train_curve(
    critic_name: str,
    spec: EstimatorSpec,
    config: BenchConfig,
    true_mi: Sequence[float],
    device: torch.device,
    bar: tqdm | None = None,
) -> Curve:
    """Train a fresh ``critic_name`` critic by maximising ``spec``'s bound along ``true_mi``; record the bound per step."""
    start = time.perf_counter()
    critic = build_critic(critic_name, config.shape, config.seed).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed + 1)
    estimates: list[float] = []
    skipped = 0
    for mi in true_mi:
        x, y = sample_correlated_gaussians(config.batch_size, config.dim, mi_to_rho(mi, config.dim), generator, config.cubic)
        bound = spec.bound(pairwise_logits(critic(x.to(device), y.to(device))))
        value = bound.item()
        estimates.append(value)
        optimizer.zero_grad(set_to_none=True)
        if math.isfinite(value):
            (-bound).backward()
            optimizer.step()
        else:
            skipped += 1
        if bar is not None:
            bar.update(1)
    smoothed = ema(estimates, config.ema_span)
    return Curve(critic_name, spec, estimates, smoothed, skipped, time.perf_counter() - start)


def run_bench(config: BenchConfig, progress: bool = True) -> BenchResult:
    """Train every (critic, estimator) pair of ``config`` over the staircase.

    With ``progress``: a tqdm bar on a terminal, otherwise (a log file, CI) one
    line per trained critic on stdout.
    """
    config.validate()
    device = resolve_device(config.device)
    specs = config.specs()
    true_mi = staircase(config.levels, config.steps)
    result = BenchResult(config, true_mi)
    total = config.steps * len(specs) * len(config.critics)
    interactive = progress and sys.stderr.isatty()
    with tqdm(total=total, desc="mi-bench", unit="step", disable=not interactive, dynamic_ncols=True) as bar:
        for critic_name in config.critics:
            for spec in specs:
                bar.set_postfix_str(f"{critic_name} / {spec.name}", refresh=True)
                curve = train_curve(critic_name, spec, config, true_mi, device, bar)
                result.curves.append(curve)
                if progress and not interactive:
                    print(f"mi-bench: trained the {critic_name} critic for {spec.name} in {curve.seconds:.0f} s", flush=True)
    return result


def write_results(result: BenchResult, out_dir: Path) -> tuple[Path, Path]:
    """Write ``mi_bench.csv`` (one row per step, estimator and critic) and ``mi_bench.json`` (settings, summary)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "mi_bench.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for curve in result.curves:
            for step, (mi, raw, smooth) in enumerate(zip(result.true_mi, curve.estimates, curve.smoothed)):
                writer.writerow((step, f"{mi:g}", curve.estimator.name, curve.critic, f"{raw:.6g}", f"{smooth:.6g}"))
    json_path = out_dir / "mi_bench.json"
    n = result.config.batch_size
    summary = {
        "config": asdict(result.config),
        "log_n": math.log(n),
        "curves": [
            {
                "critic": curve.critic,
                "estimator": curve.estimator.name,
                "label": curve.estimator.label,
                "ceiling": _json_float(curve.estimator.ceiling(n)),
                "lower_bound": curve.estimator.is_lower_bound(n, n),
                "level_estimates": {f"{level:g}": _json_float(v) for level, v in level_estimates(curve.estimates, result.true_mi).items()},
                "skipped_steps": curve.skipped_steps,
                "seconds": round(curve.seconds, 2),
            }
            for curve in result.curves
        ],
    }
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def read_results(out_dir: Path) -> BenchResult:
    """Read back what :func:`write_results` wrote to ``out_dir`` (to redraw the figure without training)."""
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / "mi_bench.csv", out_dir / "mi_bench.json"
    for path in (csv_path, json_path):
        if not path.is_file():
            raise MIBenchError(f"{path} not found: run `distill mi-bench --output {out_dir}` first")
    try:
        raw_config = json.loads(json_path.read_text(encoding="utf-8"))["config"]
        listed = {key: tuple(raw_config[key]) for key in ("levels", "critics", "estimators")}
        config = BenchConfig(**{**raw_config, **listed})
        rows = _read_rows(csv_path)
    except (KeyError, TypeError, ValueError) as error:
        raise MIBenchError(f"{out_dir} does not hold a readable mi-bench result ({error}); run the bench again") from None
    return _assemble(config, rows)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ValueError(f"{path.name} has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}")
        return list(reader)


def _assemble(config: BenchConfig, rows: Iterable[dict[str, str]]) -> BenchResult:
    true_mi: dict[int, float] = {}
    grouped: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for row in rows:
        step = int(row["step"])
        true_mi[step] = float(row["true_mi"])
        grouped.setdefault((row["critic"], row["estimator"]), []).append((step, float(row["estimate"]), float(row["smoothed"])))
    result = BenchResult(config, [true_mi[step] for step in sorted(true_mi)])
    for (critic, name), points in grouped.items():
        points.sort()
        result.curves.append(Curve(critic, parse_estimator(name), [p[1] for p in points], [p[2] for p in points]))
    return result
