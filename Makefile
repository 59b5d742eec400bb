# stablelab: every target sets up .venv first if it is missing or stale.
# GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
ARGS        ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.stablelab-installed

.DEFAULT_GOAL := help
.PHONY: help install train diagnose experiments exp-axis-plot exp-early-eval exp-clipping exp-residual-layouts exp-optimizers exp-stride exp-warmup-transformer exp-lm-warmup exp-lm-lr-sensitivity exp-lm-depth exp-lm-clipping exp-edge-of-stability exp-spike-remedies exp-warmup-curvature test test-unit test-all lint typecheck format clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(STAMP)  ## create .venv and install stablelab (editable) with dev tools

# stablelab's bytecode, written once: where PYTHONDONTWRITEBYTECODE is set (as on this
# project's CI machines) every process would compile src/ again (~0.35 s a process; the test
# suite starts ~100 of them)
BYTECODE = @$(BIN)/python -m compileall -q src

train: $(STAMP)  ## train the default experiment on CPU (extra Hydra overrides: ARGS="...")
	$(BYTECODE)
	$(BIN)/stablelab-train $(ARGS)

DIAGNOSE_ARGS ?= max_train_steps=500 logger=csv --jobs 2
diagnose: $(STAMP)  ## LR sweep -> probe -> warmup sweep -> clip threshold on the default (a few minutes)
	$(BIN)/stablelab diagnose $(DIAGNOSE_ARGS) $(ARGS)

# experiments/: each study writes its runs under $(EXP_OUT) and copies the small results
# (plots, CSV summaries, reports) into experiments/<study>/
EXP_OUT ?= logs/experiments
experiments: exp-axis-plot exp-early-eval exp-clipping exp-residual-layouts exp-optimizers exp-stride exp-warmup-transformer exp-lm-warmup exp-lm-lr-sensitivity exp-lm-depth exp-lm-clipping exp-edge-of-stability exp-spike-remedies exp-warmup-curvature  ## every study in experiments/ (see experiments/README.md)

exp-axis-plot: $(STAMP)  ## Figure 7: LR sweep, axis plot with infeasible trials (~5 min)
	rm -rf $(EXP_OUT)/axis_plot
	$(BIN)/stablelab sweep lr experiment=study_axis_plot --jobs 2 \
	  --lrs 0.0001 0.0003 0.001 0.003 0.01 0.03 0.1 0.3 1 --out $(EXP_OUT)/axis_plot
	cd $(EXP_OUT)/axis_plot && cp sweep_summary.csv axis_plot.png curves_above_lr_star.png \
	  sweep_report.md $(CURDIR)/experiments/axis_plot/

exp-early-eval: $(STAMP)  ## Figure 5: what evaluating every 100 steps hides (~1 min)
	rm -rf $(EXP_OUT)/early_eval
	$(BIN)/stablelab-train experiment=study_early_eval callbacks.progress_bar.refresh_rate=0 \
	  hydra.run.dir=$(EXP_OUT)/early_eval
	$(BIN)/python experiments/early_eval/plot.py $(EXP_OUT)/early_eval experiments/early_eval/early_eval.png
	cd $(EXP_OUT)/early_eval && cp evals.csv dense_eval.csv loss.png report.md summary.json \
	  $(CURDIR)/experiments/early_eval/

exp-clipping: $(STAMP)  ## Figure 9: no clipping, far-above, p90 and adaptive thresholds (~2 min)
	$(BIN)/python experiments/clipping/run.py --out $(EXP_OUT)/clipping

exp-residual-layouts: $(STAMP)  ## post/branch/pre-norm and ReZero across LRs and depths (~3 min)
	$(BIN)/python experiments/residual_layouts/run.py --out $(EXP_OUT)/residual_layouts

exp-optimizers: $(STAMP)  ## the six update rules, each LR-swept (~5 min)
	$(BIN)/python experiments/optimizers/run.py --out $(EXP_OUT)/optimizers

exp-stride: $(STAMP)  ## Figure 4: strides [1,2,2] vs [1,1,2] across LRs, then warmup (~3 min)
	$(BIN)/python experiments/stride/run.py --out $(EXP_OUT)/stride

exp-warmup-transformer: $(STAMP)  ## Figures 6/8: post-norm Transformer, warmup x base LR (~2 min)
	$(BIN)/python experiments/warmup_transformer/run.py --out $(EXP_OUT)/warmup_transformer

exp-lm-warmup: $(STAMP)  ## post/pre/branch-norm GPT: warmup 0-10% x LR on Tiny Shakespeare (~13 min)
	$(BIN)/python experiments/lm_warmup/run.py --out $(EXP_OUT)/lm_warmup

exp-lm-lr-sensitivity: $(STAMP)  ## pre-norm GPT: LR sweeps with qk-norm / z-loss / warmup lengths (~10 min)
	$(BIN)/python experiments/lm_lr_sensitivity/run.py --out $(EXP_OUT)/lm_lr_sensitivity

exp-lm-depth: $(STAMP)  ## GPT layouts and ReZero at 2-24 layers, no warmup (~6 min)
	$(BIN)/python experiments/lm_depth/run.py --out $(EXP_OUT)/lm_depth

exp-lm-clipping: $(STAMP)  ## Figure 9 on the GPT: p90 and adaptive clipping vs qk-norm at LR 1e-2 (~2 min)
	$(BIN)/python experiments/lm_clipping/run.py --out $(EXP_OUT)/lm_clipping

exp-edge-of-stability: $(STAMP)  ## Cohen et al.: sharpness rises to 2/lr (GD) and 38/lr (Adam) (~5 min)
	$(BIN)/python experiments/edge_of_stability/run.py --out $(EXP_OUT)/edge_of_stability

exp-spike-remedies: $(STAMP)  ## two corrupt batches: none / clipping / skip-step / rollback (~2 min)
	$(BIN)/python experiments/spike_remedies/run.py --out $(EXP_OUT)/spike_remedies

exp-warmup-curvature: $(STAMP)  ## Gilmer et al.: warmup keeps the early sharpness below the edge (~5 min)
	$(BIN)/python experiments/warmup_curvature/run.py --out $(EXP_OUT)/warmup_curvature

# the suite runs on 2 pytest-xdist workers where there are >= 2 cores, each kept to a core of
# its own (tests/conftest.py), a test file to a worker; TEST_JOBS=0 runs it in one process
# (for --pdb, or a one-core machine)
TEST_JOBS ?= $(shell [ "$$(nproc 2>/dev/null || echo 1)" -ge 2 ] && echo 2 || echo 0)
XDIST      = -n $(TEST_JOBS) --dist loadfile

test: $(STAMP)  ## run the test suite (slow reproductions excluded; TEST_JOBS=0: one process)
	$(BYTECODE)
	$(BIN)/python -m pytest $(XDIST) $(ARGS)

test-unit: $(STAMP)  ## the unit tests only (about a minute): no training runs, no subprocesses
	$(BIN)/python -m pytest tests/unit $(ARGS)

# test-all stays in one process: on the pinned xdist workers its slow tests were no faster
# (30 min against 32; a study's two parallel trials share the worker's one core) and the
# GPU-check smoke test ran past its time limits
test-all: $(STAMP)  ## run every test, the slow reproductions included
	$(BYTECODE)
	$(BIN)/python -m pytest -m "" $(ARGS)

lint: $(STAMP)  ## ruff (style, complexity limits) + format check + mypy on src/ (CI runs it)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/mypy

typecheck: $(STAMP)  ## mypy on src/ alone
	$(BIN)/mypy

format: $(STAMP)  ## ruff fix + format
	$(BIN)/ruff check --fix src tests benchmarks experiments
	$(BIN)/ruff format src tests benchmarks experiments

clean:  ## remove outputs, caches and the virtual environment
	rm -rf $(VENV) logs outputs multirun data build dist .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
