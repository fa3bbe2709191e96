#!/usr/bin/env bash
# lit-mae vs transformers on one H100/H200: 3.5 minutes on an H200 (5 with a cold compile cache); each
# step capped, 12 minutes at most:
#   1. CUDA and CPU parity tests (tests/test_parity_cuda.py, tests/test_parity_hf.py), again with
#      PARITY_SITE first on PYTHONPATH when set, then the FSDP pretraining smoke test
#      (tests/test_ddp.py -k fsdp; installs the package without deps: needs jsonargparse importable)
#   2. inference latency, base at 224 px, batches 1,2,4,8, eager and SDPA: fp32, then bf16 autocast;
#      the kernels of one fp32 SDPA forward at batch 1, lit-mae beside transformers
#   3. pretraining steps, base at 224 px, bf16 autocast, SDPA: compile off and on, all timed in turns
#
#     bash benchmarks/gpu_check.sh                       # writes into ${OUT:-benchmarks/out}
#     BATCH=32 TRAIN_REPEATS=30 bash benchmarks/gpu_check.sh
#
# A failing or timed-out step is recorded and the next one runs; the summary (status of every
# step, then every table) is printed at the end and written to summary.md. The package need not
# be installed (PYTHONPATH is the repository root); jsonargparse is needed by the FSDP step only.
set -u

cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

OUT_DIR="${OUT:-benchmarks/out}"
PYTHON="${PYTHON:-python3}"
BATCH="${BATCH:-64}"
TRAIN_REPEATS="${TRAIN_REPEATS:-20}"
INFER_REPEATS="${INFER_REPEATS:-30}"
PARITY_SITE="${PARITY_SITE:-}"  # a folder holding another transformers: the parity tests run again with it
mkdir -p "$OUT_DIR"
TABLES="$(mktemp -d)"  # tables land here and are gathered into summary.md (few files come back)
STATUS=()
FAILED=0

# run_step NAME CAP_SECONDS COMMAND...: output to $OUT_DIR/NAME.log, status line into STATUS
run_step() {
    local name=$1 cap=$2 start=$SECONDS rc
    shift 2
    echo "== $name (cap ${cap}s): $*"
    timeout -k 10 "$cap" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    local verdict="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then verdict="TIMED OUT"; elif [ "$rc" -ne 0 ]; then verdict="FAILED"; fi
    [ "$verdict" = "ok" ] || FAILED=$((FAILED + 1))
    STATUS+=("| $name | $verdict (rc $rc) | $((SECONDS - start)) s | $name.log |")
    echo "   $verdict (rc $rc) in $((SECONDS - start)) s"
}

# the parity tests, after a line naming the transformers they compare against
PARITY_PY="import sys, transformers, pytest; print('transformers', transformers.__version__, 'from', transformers.__file__); \
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_parity_cuda.py', 'tests/test_parity_hf.py']))"
run_step parity 80 "$PYTHON" -c "$PARITY_PY"
if [ -n "$PARITY_SITE" ]; then  # the same tests against another transformers (e.g. the version CI pins)
    run_step parity_site 80 env PYTHONPATH="$PARITY_SITE:$PYTHONPATH" "$PYTHON" -c "$PARITY_PY"
fi

# FSDP (tests/test_ddp.py -k fsdp: every GPU, one shard unit per Block, bf16): it runs `python -m
# lit_mae`, which needs the package installed (lit_mae.callbacks/datamodules are an install mapping)
run_step fsdp 150 bash -c "'$PYTHON' -m pip install -q --no-deps --no-build-isolation -e . && \
    '$PYTHON' -m pytest -q -p no:cacheprovider tests/test_ddp.py -k fsdp"

for dtype in fp32 bf16; do
    run_step "inference_$dtype" 55 "$PYTHON" benchmarks/inference.py --device cuda --preset base --img-size 224 \
        --batches 1,2,4,8 --attn both --dtype "$dtype" --repeats "$INFER_REPEATS" --markdown "$TABLES/inference_$dtype.md"
done

# the kernels of one fp32 SDPA forward at batch 1, where launches, not FLOPs, set the time
run_step profile_fp32_b1 60 "$PYTHON" benchmarks/profile_forward.py --device cuda --preset base --img-size 224 \
    --batch 1 --attn sdpa --dtype fp32 --top 15 --markdown "$TABLES/profile_fp32_b1.md"

# compile off and on in one group, timed in turns, so that lit-mae compiled vs transformers eager is one run's ratio
run_step train_compile_both 240 "$PYTHON" benchmarks/train_step.py --device cuda --presets base --img-size 224 \
    --batch "$BATCH" --dtype bf16 --attn sdpa --compile both --repeats "$TRAIN_REPEATS" \
    --markdown "$TABLES/train_compile_both.md"

{
    echo "# gpu_check summary"
    echo
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
    fi
    "$PYTHON" -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__)" 2>&1
    echo
    echo "| step | result | time | log |"
    echo "|---|---|---|---|"
    printf '%s\n' "${STATUS[@]}"
    echo
    for log in parity parity_site; do
        [ -f "$OUT_DIR/$log.log" ] || continue
        grep -m 1 "^transformers " "$OUT_DIR/$log.log"
        grep -E "^(FAILED|ERROR) " "$OUT_DIR/$log.log" | head -n 15
        tail -n 1 "$OUT_DIR/$log.log" | sed "s/^/$log tests: /"
    done
    for table in inference_fp32 inference_bf16 profile_fp32_b1 train_compile_both; do
        echo
        if [ -s "$TABLES/$table.md" ]; then cat "$TABLES/$table.md"; else echo "($table: no table; see $table.log)"; fi
    done
    echo
    echo "$FAILED step(s) failed or timed out."
} | tee "$OUT_DIR/summary.md"

rm -rf "$TABLES"
exit $((FAILED > 0))
