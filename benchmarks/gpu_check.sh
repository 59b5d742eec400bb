#!/usr/bin/env bash
# stablelab's GPU checks in one script, under 8 minutes on one GPU:
#   1. the GPU-marked tests (pytest -m gpu);
#   2. trainer=gpu against a bare PyTorch loop on the same GPU, default and LM workloads
#      (benchmarks/vs_bare_loop.py --device cuda; goal <= 1.10x);
#   3. the LM GPU recipe (experiment=shakespeare_char_gpu): held-out loss, time, peak memory.
# Everything goes to OUT (default: ./gpu_check_out) and a summary to OUT/gpu_check.md.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, with PyPI: the wheels that a GPU image
#                                            # without network lacks -> .whl/gpu (git-ignored;
#                                            # carry it: run(carry=[".whl/gpu"], ...))
#   bash benchmarks/gpu_check.sh [OUT]       # on the GPU machine
#
# On a machine with a CUDA build of torch and network, skip --prepare: `pip install -e .`
# (see README, GPU installs) is enough; the script uses whatever python3 holds torch.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl/gpu
PY=${PYTHON:-python3}

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
  # what this workplace's CUDA image already holds (../.library/device/KINDS.md) stays
  # behind: the device tool carries at most 64 MiB
  for have in numpy scipy scikit_learn matplotlib contourpy fonttools kiwisolver pillow \
      joblib threadpoolctl cycler pyparsing python_dateutil packaging requests urllib3 idna \
      certifi charset_normalizer click pyyaml protobuf typing_extensions anyio h11 httpcore \
      httpx sniffio tzdata narwhals xxhash; do
    rm -f "$WHEELS/$have"-[0-9]*.whl
  done
  du -sh "$WHEELS"
  exit 0
fi

OUT=${1:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=offline STABLELAB_DATA_DIR="$OUT/data"
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
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" \
    hydra-core omegaconf wandb mnist1d scikit-learn 2>&1 | tail -3
fi

: > "$OUT/gpu_check.md"
log "# stablelab GPU check, $(date +%Y-%m-%d)"
"$PY" - <<'EOF' | tee -a "$OUT/gpu_check.md"
import torch, lightning
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
      f"lightning {lightning.__version__}; CUDA {torch.version.cuda}")
EOF

log "## 1. GPU-marked tests"
"$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -5 | tee -a "$OUT/gpu_check.md"

log "## 2. trainer=gpu vs a bare loop on the same GPU"
for w in "default --steps 1500" "lm --steps 2000"; do
  # shellcheck disable=SC2086
  timeout 240 "$PY" benchmarks/vs_bare_loop.py --workload $w --device cuda --repeats 2 \
    2> "$OUT/vs_bare_${w%% *}.log" | tee -a "$OUT/gpu_check.md" || log "(timed out or failed: see vs_bare_${w%% *}.log)"
done

log "## 3. experiment=shakespeare_char_gpu (nanoGPT: 1.4697 val loss in ~3 min on an A100)"
timeout 300 "$PY" -m stablelab.train experiment=shakespeare_char_gpu logger=csv \
  callbacks.progress_bar.terminal=false "hydra.run.dir=$OUT/shakespeare_char_gpu" \
  > "$OUT/shakespeare_char_gpu.log" 2>&1 || log "(timed out or failed: see shakespeare_char_gpu.log)"
"$PY" - "$OUT/shakespeare_char_gpu/summary.json" <<'EOF' | tee -a "$OUT/gpu_check.md"
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit("no summary")
keys = ("status", "steps", "val_loss", "test_loss", "heldout_loss", "wall_seconds",
        "gpu_peak_memory_gib")
print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
print("| " + " | ".join(str(s.get(k)) for k in keys) + " |")
EOF
log "done"
