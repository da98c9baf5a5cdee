#!/usr/bin/env bash
# The GPU checks in one run, one report:
#
#   perf/gpu_check.sh [REPORT.md]          (default: $OUT/gpu_check_report.md, else ./gpu_check_report.md)
#
# Where torch sees a CUDA device, it runs, each step with its own time limit:
#   1. the device tests: tests marked `gpu` and tests/run/test_device.py (its cuda cases);
#   2. a seeded sample of the digits suite's stored cells recomputed on CUDA and compared example by
#      example with the committed CPU results in results/digits (`shiftbench reproduce`: exact or
#      within its tolerance, exit 1 otherwise);
#   3. perf/real_suite_cost.py on the GPU at the suites' own settings (passes and seconds per
#      attacked image, attack / bare forward+backward throughput);
#   4. the full dress rehearsal of the real suites (tests/run/test_rehearsal.py -m slow), unless
#      GPU_CHECK_REHEARSAL=0.
# and writes what each printed, its exit status and its duration into the report.  Without a CUDA
# device it says so and exits 0: no test depends on this script.
#
# Knobs: PYTHON (default .venv/bin/python), DIGITS_SAMPLE (default 60 cells), COST_IMAGES (default 32),
# GPU_CHECK_REHEARSAL (default 1), STEP_TIMEOUT (seconds per step, default 900).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-.venv/bin/python}
REPORT=${1:-${OUT:-.}/gpu_check_report.md}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: torch sees no CUDA device here ($PY); nothing to check. Run it on a machine with a GPU."
    exit 0
fi

failed=0
{
    echo "# GPU check"
    echo
    echo "Made by \`perf/gpu_check.sh\` on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
    echo '```'
} > "$REPORT"

step() {  # step TITLE OK_CODES COMMAND...: run, append its output, status and time to the report
    local title=$1 ok=$2; shift 2
    local out t0 t1 rc
    out=$(mktemp)
    echo "gpu_check: $title ..." >&2
    t0=$(date +%s)
    timeout "$STEP_TIMEOUT" "$@" > "$out" 2>&1
    rc=$?
    t1=$(date +%s)
    local verdict="ok"
    case " $ok " in *" $rc "*) ;; *) verdict="FAILED"; failed=1 ;; esac
    {
        echo
        echo "## $title: $verdict (exit $rc, $((t1 - t0)) s)"
        echo
        echo "\`$*\`"
        echo
        echo '```'
        tail -c 20000 "$out"
        echo '```'
    } >> "$REPORT"
    echo "gpu_check: $title: $verdict (exit $rc, $((t1 - t0)) s)" >&2
    rm -f "$out"
}

# pytest exits 5 when no test is marked gpu: nothing to fail
step "tests marked gpu" "0 5" "$PY" -m pytest -q -m gpu
step "device tests (cuda cases)" "0" "$PY" -m pytest -q tests/run/test_device.py
step "digits on CUDA vs the committed CPU results" "0" \
    "$PY" -m benchmark.cli reproduce --suite digits --sample "${DIGITS_SAMPLE:-60}" --seed 0
step "real_suite_cost on the GPU (the suites' own settings)" "0" \
    env PYTHONPATH=. "$PY" perf/real_suite_cost.py --device cuda --images "${COST_IMAGES:-32}" --max-steps 0
if [ "${GPU_CHECK_REHEARSAL:-1}" != "0" ]; then
    step "full dress rehearsal of the real suites" "0" "$PY" -m pytest -q -m slow tests/run/test_rehearsal.py -s
fi

echo "gpu_check: report in $REPORT" >&2
exit $failed
