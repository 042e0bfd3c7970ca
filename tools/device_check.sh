#!/usr/bin/env bash
# The device check (issue 18): one command that proves every CUDA path and measures the batch-64 step.
#
#   tools/device_check.sh OUT_DIR
#
# Runs from the source tree; installs nothing and reaches no network. Parts, in order:
#   environment   torch / CUDA / device (environment.json) and nvidia-smi (nvidia-smi.txt) if present
#   cuda_suite    pytest -m cuda tests/test_cuda_paths.py (cuda_suite.xml, cuda_suite.log, cuda_figures.json)
#   bench_*       tools/benchmark.py, kd,crd,crd_kd, resnet32x4 -> resnet8x4, batch 64:
#                 fp32, bf16, bf16_channels_last, bf16_cuda_graph (bf16 + channels_last + optimizer.fused +
#                 cuda_graph: the whole step replayed as one CUDA graph), then (after the profile) bf16_compile
#                 (bench_*.json, bench_*.log);
#                 the reference-style loop (fp32 whatever the precision) is timed once, in bench_fp32
#   profile       one CRD+KD step under torch.profiler (profile_crd_kd.txt, profile.json)
#   launches_cuda_graph  tools/count_step_ops.py: operators and kernel launches per CRD+KD step with cuda_graph
#                 (launches_cuda_graph.log; the plain step's launches are in profile.json)
#   summary       summary.json and summary.md: every part's status and every figure
# Every part runs under a time limit within an overall budget (DEVICE_CHECK_BUDGET_S, default 450 s:
# under 8 minutes with the summary); a part that fails is reported and the next one runs. Without
# CUDA every CUDA part reports "skipped: no CUDA" (the suite still runs, to show that it skips);
# benchmarks are not run on a CPU here, so no CPU figure can pass for a GPU one.
# Exit status: 0 when no part failed, 1 otherwise, 2 on a usage error.
# DISTILL_DEVICE_CHECK_FAIL=PART makes PART fail on purpose (for tests/test_device_check.py).
set -u

if [ $# -ne 1 ]; then
    echo "usage: tools/device_check.sh OUT_DIR" >&2
    exit 2
fi
OUT=$1
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" || { echo "device_check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
cd "$REPO" || exit 2
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
BUDGET=${DEVICE_CHECK_BUDGET_S:-450}
STEPS=${DEVICE_CHECK_STEPS:-30}
WARMUP=${DEVICE_CHECK_WARMUP:-5}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")   # the 50 000-image fake CIFAR-100: not in OUT
trap 'rm -rf "$SCRATCH"' EXIT
STARTED=$(date +%s)
: > "$OUT/parts.tsv"
FAILED=0

say() { echo "[device_check $(date +%H:%M:%S) +$(( $(date +%s) - STARTED ))s] $*"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/parts.tsv"; }

# part NAME LIMIT_S NEEDS_CUDA(0|1) COMMAND...: run COMMAND (output to NAME.log and the terminal) within LIMIT_S
# and the remaining budget; record passed / failed / skipped.
part() {
    local name=$1 limit=$2 needs_cuda=$3
    shift 3
    local left=$(( BUDGET - ($(date +%s) - STARTED) ))
    if [ "$needs_cuda" = 1 ] && [ "$HAS_CUDA" != 1 ]; then
        say "$name: skipped: no CUDA"
        record "$name" "skipped: no CUDA" 0 ""
        return
    fi
    if [ "$left" -lt 20 ]; then
        say "$name: skipped: out of time (budget ${BUDGET}s)"
        record "$name" "skipped: out of time" 0 "budget ${BUDGET}s spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "$name: starting (limit ${limit}s) …"
    local begin=$(date +%s) rc
    if [ "${DISTILL_DEVICE_CHECK_FAIL:-}" = "$name" ]; then
        echo "$name: failing on purpose (DISTILL_DEVICE_CHECK_FAIL=$name)" | tee "$OUT/$name.log"
        rc=1
    else
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
        rc=${PIPESTATUS[0]}
    fi
    local seconds=$(( $(date +%s) - begin ))
    if [ $rc -eq 0 ]; then
        say "$name: ${PASS_STATUS:-passed} in ${seconds}s"
        record "$name" "${PASS_STATUS:-passed}" "$seconds" "${PASS_NOTE:-}"
    else
        local why="exit $rc"
        [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="timed out after ${limit}s"
        say "$name: FAILED ($why) in ${seconds}s; see $OUT/$name.log"
        record "$name" failed "$seconds" "$why; $name.log"
        FAILED=1
    fi
}

say "writing to $OUT"
HAS_CUDA=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
say "CUDA available: $HAS_CUDA"

part environment 60 0 "$PYTHON" tools/device_check.py env "$OUT"
if command -v nvidia-smi > /dev/null; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; fi

# Without CUDA the suite still runs, to show that it skips cleanly; a pass there is reported as "skipped: no CUDA".
SUITE=(env DISTILL_CUDA_FIGURES="$OUT/cuda_figures.json" "$PYTHON" -m pytest -m cuda tests/test_cuda_paths.py -q -rs
       -p no:cacheprovider --junitxml="$OUT/cuda_suite.xml")
if [ "$HAS_CUDA" = 1 ]; then
    part cuda_suite 220 1 "${SUITE[@]}"
else
    PASS_STATUS="skipped: no CUDA" PASS_NOTE="the suite ran and skipped its tests" part cuda_suite 120 0 "${SUITE[@]}"
fi

BENCH=("$PYTHON" tools/benchmark.py --methods kd,crd,crd_kd --teacher resnet32x4 --student resnet8x4 --batch-size 64
       --steps "$STEPS" --warmup "$WARMUP" --workers 4 --data-root "$SCRATCH/data")
part bench_fp32 110 1 "${BENCH[@]}" --json "$OUT/bench_fp32.json" --precision fp32
part bench_bf16 80 1 "${BENCH[@]}" --json "$OUT/bench_bf16.json" --precision bf16 --no-reference
part bench_bf16_channels_last 80 1 "${BENCH[@]}" --json "$OUT/bench_bf16_channels_last.json" --precision bf16 --channels-last --no-reference
part bench_bf16_cuda_graph 80 1 "${BENCH[@]}" --json "$OUT/bench_bf16_cuda_graph.json" --precision bf16 --channels-last \
    -o optimizer.fused=true -o cuda_graph=true --no-reference
part profile 60 1 "$PYTHON" tools/device_check.py profile "$OUT" --scratch "$SCRATCH"
part launches_cuda_graph 60 1 "$PYTHON" tools/count_step_ops.py --methods crd_kd --data-root "$SCRATCH/data" \
    -o precision=bf16 -o channels_last=true -o optimizer.fused=true -o cuda_graph=true
part bench_bf16_compile 150 1 "${BENCH[@]}" --json "$OUT/bench_bf16_compile.json" --precision bf16 --compile --no-reference

say "summary …"
"$PYTHON" tools/device_check.py summary "$OUT" > "$OUT/summary.log" 2>&1 || { say "summary: FAILED; see $OUT/summary.log"; FAILED=1; }
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
say "done in $(( $(date +%s) - STARTED ))s; failed parts: $(awk -F'\t' '$2=="failed"{printf "%s ", $1}' "$OUT/parts.tsv")"
exit $FAILED
