"""CPU training throughput under thread settings, alone and beside a process that keeps one core busy.

Why: on a 2-core machine with one core taken by another process, torch's default
(one OpenMP thread per core, spinning while it waits for the others) fell from
~250 to ~19 images/s: each parallel region waits for the thread whose core is
taken. This measures the choices: the thread count (1, all cores, all but one),
``OMP_WAIT_POLICY=PASSIVE`` against the default (active spin-wait), and the
policy ``distill`` picks (no variables set, the CLI's default applied).

Each setting runs in a fresh interpreter (OpenMP reads its variables once, when
torch loads): a few SGD steps of a resnet8x4 student on random 32×32 images,
batch 64, after warm-up steps. The busy process is a Python busy loop pinned to
the last core. Run it on a quiet machine: figures from a shared one say little.

    python tools/bench_threads.py                   # every setting, alone and busy
    python tools/bench_threads.py --steps 20 --repeats 3 --json bench_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, os, sys, time
steps, warmup, batch, arch, apply_distill = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
if apply_distill:
    from distill.engine.threads import configure_cpu_threads
    configure_cpu_threads()
import torch
from distill.models import create_model
from distill.engine.threads import cpu_threads_description
torch.manual_seed(0)
model = create_model(arch, num_classes=100)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
def step():
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
for _ in range(warmup):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print("RESULT" + json.dumps({"images_per_s": steps * batch / seconds, "threads": torch.get_num_threads(),
                             "description": cpu_threads_description()}))
"""


@dataclass(frozen=True)
class Setting:
    """One way to run: OMP_NUM_THREADS and OMP_WAIT_POLICY (None: unset), or distill's own default."""

    label: str
    threads: int | None
    wait_policy: str | None
    distill_default: bool = False

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "DISTILL_CPU_THREADS")}
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        if self.wait_policy is not None:
            env["OMP_WAIT_POLICY"] = self.wait_policy
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        return env


def settings(cores: int) -> list[Setting]:
    """Thread counts 1, all but one core (when that differs), all cores; each with both wait policies; distill's."""
    counts = sorted({1, max(1, cores - 1), cores})
    found = [Setting(f"{n} thread(s), {policy or 'default'} wait", n, policy) for n in counts for policy in (None, "PASSIVE")]
    found.append(Setting("torch default (no variables)", None, None))
    found.append(Setting("distill default (configure_cpu_threads)", None, None, distill_default=True))
    return found


def start_busy_loop(core: int) -> subprocess.Popen:
    """A process that keeps ``core`` busy: what another user's job does to a shared machine."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(process.pid, {core})
    return process


def measure(setting: Setting, steps: int, warmup: int, batch: int, arch: str) -> dict:
    command = [sys.executable, "-c", CHILD, str(steps), str(warmup), str(batch), arch, "1" if setting.distill_default else "0"]
    result = subprocess.run(command, env=setting.environment(dict(os.environ)), capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{setting.label}: the measuring process failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT"):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet8x4")
    parser.add_argument("--repeats", type=int, default=1, help="measure each setting this many times; the best is kept")
    parser.add_argument("--only", choices=("alone", "busy"), help="only this condition (default: both)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows here")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0))
    conditions = [args.only] if args.only else ["alone", "busy"]
    print(f"{cores} core(s) available; load average {os.getloadavg()[0]:.2f} (figures from a loaded machine say little)")
    rows = []
    for condition in conditions:
        busy = start_busy_loop(max(os.sched_getaffinity(0))) if condition == "busy" else None
        try:
            time.sleep(0.5 if busy else 0)
            for setting in settings(cores):
                best = max((measure(setting, args.steps, args.warmup, args.batch_size, args.arch) for _ in range(args.repeats)),
                           key=lambda r: r["images_per_s"])
                row = {"condition": condition, **asdict(setting), **best}
                rows.append(row)
                print(f"{condition:<5}  {setting.label:<42} {best['images_per_s']:8.1f} images/s  ({best['description']})", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": cores, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
