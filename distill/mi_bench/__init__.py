"""The mutual-information estimator bench: the first experiment of ML-CPC (Song & Ermon, NeurIPS 2020).

Critics trained on correlated Gaussians whose true MI climbs a staircase
(2 → 4 → 6 → 8 → 10 nats), one per (critic type, estimator), each by maximising
its estimator's bound. The estimators are the pure functions the distillation
losses use (:mod:`distill.losses.contrastive.estimators`).

* :mod:`~distill.mi_bench.gaussians`: the data, the true MI, the exact log density ratio, the staircase.
* :mod:`~distill.mi_bench.critics`: the separable and joint critics.
* :mod:`~distill.mi_bench.estimators`: the table of estimator names over the loss functions.
* :mod:`~distill.mi_bench.bench`: the training loop, the CSV and its summary.
* :mod:`~distill.mi_bench.figure`: the PNG (matplotlib, the ``plots`` extra).

The command line is ``distill mi-bench`` (:mod:`distill.cli.mi_bench`).
"""

from distill.mi_bench.bench import PAPER, QUICK, BenchConfig, BenchResult, Curve, read_results, run_bench, write_results
from distill.mi_bench.errors import MIBenchError
from distill.mi_bench.estimators import DEFAULT_ESTIMATORS, ESTIMATORS, EstimatorSpec, pairwise_logits, parse_estimator
from distill.mi_bench.gaussians import log_density_ratio, mi_to_rho, rho_to_mi, sample_correlated_gaussians, staircase

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "PAPER",
    "QUICK",
    "BenchConfig",
    "BenchResult",
    "Curve",
    "EstimatorSpec",
    "MIBenchError",
    "log_density_ratio",
    "mi_to_rho",
    "pairwise_logits",
    "parse_estimator",
    "read_results",
    "rho_to_mi",
    "run_bench",
    "sample_correlated_gaussians",
    "staircase",
    "write_results",
]
