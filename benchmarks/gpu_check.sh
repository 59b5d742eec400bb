#!/usr/bin/env bash
# stablelab's GPU checks in one script, under 8 minutes on one GPU:
#   1. the GPU-marked tests (pytest -m gpu);
#   2. the LM GPU recipe (experiment=shakespeare_char_gpu): held-out loss, time, peak memory;
#   3. trainer=gpu against a bare PyTorch loop on the same GPU, default and LM workloads
#      (benchmarks/vs_bare_loop.py --device cuda; goal <= 1.10x).
# Each step has a time limit, and all of them end within GPU_CHECK_BUDGET_S (560 s: the
# device tool's 600 s per command); what finished is in OUT whatever stops later.
# A summary goes to OUT/gpu_check.md (OUT default: ./gpu_check_out), with a few small files
# beside it; the runs themselves stay in GPU_CHECK_WORK (default: a fresh /tmp folder).
#
#   bash benchmarks/gpu_check.sh --prepare   # here, with PyPI: the wheels that a GPU image
#                                            # without network lacks -> .whl/gpu (git-ignored;
#                                            # carry it: run(carry=[".whl/gpu"], ...))
#   bash benchmarks/gpu_check.sh [OUT]       # on the GPU machine
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh OUT   # the same steps on the CPU, a few
#                                            # training steps each: tests the script itself
#
# On a machine with a CUDA build of torch and network, skip --prepare: `pip install -e .`
# (see README, GPU installs) is enough; the script uses whatever python3 holds torch.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl/gpu
PY=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}

if [[ "${1:-}" == "--prepare" ]]; then
  # the packages stablelab needs beyond torch / lightning / torchmetrics / matplotlib /
  # numpy / pytest, with their dependencies, as wheels for the GPU image's CPython
  # (GPU_PYTHON, default 3.12: this workplace's CUDA image) on x86-64 Linux
  mkdir -p "$WHEELS"
  # pure-Python packages published as source only: built here into py3-none-any wheels
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELS" \
    "antlr4-python3-runtime==4.9.*" "mnist1d>=0.0.2"
  "$PY" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: --find-links "$WHEELS" \
    --python-version "${GPU_PYTHON:-3.12}" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    "hydra-core>=1.3.2,<1.4" "omegaconf>=2.3,<2.4" "wandb>=0.17" "mnist1d>=0.0.2" \
    "scikit-learn>=1.3"
  # what this workplace's CUDA image already holds (../.library/device/KINDS.md, read there
  # 2026-11-17) stays behind: the device tool carries at most 64 MiB. click, protobuf and
  # typing_extensions are on the image too but are carried (small): wandb and pydantic need
  # recent versions, and pip takes a carried wheel only where the image's is too old.
  IMAGE_HAS="numpy scipy scikit_learn matplotlib contourpy fonttools kiwisolver pillow joblib
    threadpoolctl cycler pyparsing python_dateutil packaging requests urllib3 idna certifi
    charset_normalizer pyyaml anyio h11 httpcore httpx narwhals xxhash"
  for have in $IMAGE_HAS; do
    rm -f "$WHEELS/$have"-[0-9]*.whl
  done
  "$PY" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: --no-deps \
    --python-version "${GPU_PYTHON:-3.12}" --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any \
    "click>=8.2" "protobuf>=5,<8,!=5.28.0,!=5.29.0" "typing_extensions>=4.16"
  # each carried wheel's requirements: carried or on the image, or the install there stops
  # shellcheck disable=SC2086
  "$PY" benchmarks/wheel_closure.py "$WHEELS" --python "${GPU_PYTHON:-3.12}" --have $IMAGE_HAS
  du -sh "$WHEELS"
  exit 0
fi

OUT=${1:-gpu_check_out}
# the runs write into WORK; OUT gets a few small files (the device tool returns at most 8,
# no deeper than two folders): gpu_check.md, the pytest log, the recipe's console log,
# summary.json and evals.csv, the two benchmark logs
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/stablelab_gpu_check.XXXXXX)}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=offline STABLELAB_DATA_DIR="$WORK/data"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.md"; }

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["hydra", "omegaconf", "wandb", "mnist1d", "sklearn", "lightning", "torchmetrics",
        "matplotlib"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
EOF
)
if [[ -n "$missing" ]]; then
  [[ -d "$WHEELS" ]] || { echo "missing: $missing; run --prepare where PyPI is reachable" >&2; exit 2; }
  # into the image's environment, keeping its packages where they do; if pip cannot (a
  # read-only site-packages, a conflict), every carried wheel into /tmp/site, put first
  if ! "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
      hydra-core omegaconf wandb mnist1d scikit-learn; then
    echo "pip could not install into the image's environment: --target /tmp/site" >&2
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --target /tmp/site \
      "$WHEELS"/*.whl || exit 2
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
fi

: > "$OUT/gpu_check.md"
log "# stablelab GPU check, $(date +%Y-%m-%d)"
if [[ "$SMOKE" == 1 ]]; then
  log "(GPU_CHECK_SMOKE=1: every step on the CPU with a few training steps: checks the script, measures nothing)"
  # (--steps: a multiple of the validation interval; the recipe needs its warmup shorter)
  DEVICE=cpu TRAINER=cpu STEPS_DEFAULT=100 STEPS_LM=250 RECIPE_STEPS=4
  RECIPE_EXTRA=(schedule.warmup_steps=1 trainer.val_check_interval=2
    +trainer.limit_val_batches=1 +trainer.limit_test_batches=1)
else
  DEVICE=cuda TRAINER=gpu STEPS_DEFAULT=1500 STEPS_LM=2000 RECIPE_STEPS=5000 RECIPE_EXTRA=()
fi
DEVICE="$DEVICE" "$PY" - <<'EOF' | tee -a "$OUT/gpu_check.md"
import os, sys, torch, lightning
if os.environ["DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"no CUDA device visible to torch {torch.__version__}: nothing to check "
             "(GPU_CHECK_SMOKE=1 runs the script's steps on the CPU)")
name = torch.cuda.get_device_name(0) if os.environ["DEVICE"] == "cuda" else "none (CPU smoke)"
print(f"GPU: {name}; torch {torch.__version__}; lightning {lightning.__version__}; "
      f"CUDA {torch.version.cuda}")
EOF

# the device tool stops a command at 600 s: each step gets at most what is left of BUDGET_S
BUDGET_S=${GPU_CHECK_BUDGET_S:-560}
left() { local l=$((BUDGET_S - SECONDS)); echo $((l < $1 ? (l > 10 ? l : 10) : $1)); }

log "## 1. GPU-marked tests"
timeout -k 20 "$(left 90)" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ \
  > "$OUT/pytest_gpu.log" 2>&1 || log "(timed out or failed: see pytest_gpu.log)"
tail -3 "$OUT/pytest_gpu.log" | tee -a "$OUT/gpu_check.md"

log "## 2. experiment=shakespeare_char_gpu (nanoGPT: 1.4697 val loss in ~3 min on an A100)"
RUN="$WORK/shakespeare_char_gpu"
timeout -k 20 "$(left 300)" "$PY" -m stablelab.train experiment=shakespeare_char_gpu \
  logger=csv "trainer=$TRAINER" "max_train_steps=$RECIPE_STEPS" \
  ${RECIPE_EXTRA[@]+"${RECIPE_EXTRA[@]}"} callbacks.progress_bar.terminal=false \
  "hydra.run.dir=$RUN" > "$OUT/shakespeare_char_gpu.log" 2>&1 \
  || log "(timed out or failed: see shakespeare_char_gpu.log; the summary says how far it got)"
for f in summary.json evals.csv; do
  if [[ -f "$RUN/$f" ]]; then cp "$RUN/$f" "$OUT/shakespeare_char_gpu_$f"; fi
done
"$PY" - "$RUN/summary.json" <<'EOF' | tee -a "$OUT/gpu_check.md"
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except FileNotFoundError:
    print("no summary.json: the run stopped before its end")
    sys.exit(0)
keys = ("status", "steps", "val_loss", "test_loss", "heldout_loss", "wall_seconds",
        "gpu_peak_memory_gib")
print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
print("| " + " | ".join(str(s.get(k)) for k in keys) + " |")
EOF

log "## 3. trainer=$TRAINER vs a bare loop on the same device"
for w in "default --steps $STEPS_DEFAULT" "lm --steps $STEPS_LM"; do
  # shellcheck disable=SC2086
  timeout -k 20 "$(left 150)" "$PY" benchmarks/vs_bare_loop.py --workload $w --device "$DEVICE" \
    --repeats 2 2> "$OUT/vs_bare_${w%% *}.log" | tee -a "$OUT/gpu_check.md" \
    || log "(timed out or failed: see vs_bare_${w%% *}.log)"
done
log "done in ${SECONDS} s"
