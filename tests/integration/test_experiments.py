"""The experiments' claims, rerun (slow: `make test-all`; each study also has `make exp-*`)."""

from __future__ import annotations

import csv
import json
import math
import runpy
from pathlib import Path

import pytest

from conftest import QUIET, ROOT, assert_ok, run_cli
from stablelab.analysis.sweep import edge_of_feasibility, load_trials, select_lr_star
from stablelab.workflows import Trial, clip_threshold, run_trials

pytestmark = pytest.mark.slow


def test_early_eval_dense_evaluation_shows_what_sparse_evaluation_hides(tmp_path):
    out = tmp_path / "early_eval"
    args = [
        *QUIET, "optimizer.lr=0.03", "max_train_steps=300", "logger=csv", "test=false",
        "callbacks.dense_eval.every_step_until=100", f"hydra.run.dir={out}",
    ]  # fmt: skip
    assert_ok(run_cli(args, tmp_path))
    sparse = [float(r["val_loss"]) for r in csv.DictReader((out / "evals.csv").open())]
    dense = [float(r["val_loss"]) for r in csv.DictReader((out / "dense_eval.csv").open())]
    assert max(dense) > 10 * max(sparse)  # the early blow-up is only visible densely
    s = json.loads((out / "summary.json").read_text())
    assert s["val_loss_rise_step"] is not None and s["val_loss_rise_step"] <= 10
    assert "**Early instability**" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------
# The other studies: each claim in experiments/README.md rerun on the study's own config
# (configs/experiment/study_<study>.yaml) with the trials that carry it, one torch thread
# per trial as the studies run them. Thresholds are the claims, with margin: the runs at
# unstable LRs are chaotic, and another CPU may round differently.


def _study(tmp_path, study: str, trials: list[Trial], jobs: int = 2) -> dict[str, dict]:
    out = tmp_path / study
    done = run_trials(
        trials, out, [f"experiment=study_{study}", *QUIET], jobs=jobs, threads=1,
        progress=False,
    )  # fmt: skip
    for d in done:
        assert d["returncode"] == 0, (out / f"{d['name']}.log").read_text()[-4000:]
    return {t.name: json.loads((out / t.name / "summary.json").read_text()) for t in trials}


def _rows(path):
    return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(path.open())]


def test_axis_plot_lr_star_at_the_edge_infeasible_high(tmp_path):
    lrs = (0.003, 0.01, 1.0)
    _study(tmp_path, "axis_plot", [Trial(f"lr_{lr:g}", [f"optimizer.lr={lr}"]) for lr in lrs])
    rows = {r["lr"]: r for r in load_trials(tmp_path / "axis_plot")}  # the sweep's reading
    assert rows[0.003]["feasible"] and not rows[0.003]["unstable"]
    assert rows[0.003]["val_loss"] < 0.1
    assert rows[0.01]["feasible"] and rows[0.01]["unstable"]  # early validation-loss jump
    assert rows[1.0]["status"] == "diverged" and not rows[1.0]["feasible"]
    star = select_lr_star(list(rows.values()))
    # lr* is 3e-3 (stable) or 1e-2 (unstable, feasible): which of the two has the lower best
    # val loss moves with the CPU's rounding (2026-11-30: 0.0485 vs 0.0656; on an AVX2 host,
    # 2026-12-07: 0.0548 vs 0.0540); either way the next larger LR tried is bad
    assert star["lr"] in (0.003, 0.01) and edge_of_feasibility(list(rows.values()), star) is True


def test_clipping_far_above_is_a_no_op_and_p90_stabilises(tmp_path):
    (none,) = _study(tmp_path / "a", "clipping", [Trial("none", ["clipping=none"])]).values()
    p90 = clip_threshold(tmp_path / "a" / "clipping" / "none")
    s = _study(
        tmp_path / "b", "clipping",
        [
            Trial("far_above", ["clipping=fixed", f"clipping.clip_threshold={100 * p90:.4g}"]),
            Trial("p90", ["clipping=fixed", f"clipping.clip_threshold={p90:.4g}"]),
        ],
    )  # fmt: skip
    runs = tmp_path / "a" / "clipping" / "none", tmp_path / "b" / "clipping" / "far_above"
    # a threshold far above every norm changes nothing, bit for bit
    assert [(r["step"], r["grad_norm"]) for r in _rows(runs[1] / "grad_norms.csv")] == [
        (r["step"], r["grad_norm"]) for r in _rows(runs[0] / "grad_norms.csv")
    ]
    assert s["far_above"]["clip_fraction"] == 0 and s["far_above"]["val_loss"] == none["val_loss"]
    # the p90 threshold clips a minority of updates and ends with a lower validation loss
    # (the loss-spike counts, a handful either way, depend on the CPU's rounding)
    assert 0.01 < s["p90"]["clip_fraction"] < 0.5
    assert s["p90"]["val_loss"] < 0.75 * none["val_loss"]


def test_stride_both_strides_turn_unstable_at_the_same_lr(tmp_path):
    trials = [
        Trial(f"{name}_lr{lr:g}", [f"model.strides={strides}", f"optimizer.lr={lr}"])
        for name, strides in (("stride2", "[1,2,2]"), ("stride1", "[1,1,2]"))
        for lr in (0.003, 0.01)
    ]
    _study(tmp_path, "stride", trials)
    s = {Path(r["run_dir"]).name: r for r in load_trials(tmp_path / "stride")}
    for name in ("stride2", "stride1"):  # the measured outcome: no difference between them
        low, high = s[f"{name}_lr0.003"], s[f"{name}_lr0.01"]
        assert low["feasible"] and not low["unstable"] and low["val_loss"] < 0.15
        # the early validation-loss jump, in the first updates of both
        assert high["unstable"] and high["first_instability_step"] <= 5


def test_warmup_transformer_warmup_rescues_a_high_lr(tmp_path):
    s = _study(
        tmp_path, "warmup_transformer",
        [
            Trial(f"w{w}", ["optimizer.lr=0.01", f"schedule.warmup_steps={w}",
                            f"schedule.post_warmup_steps={2 * w}"])
            for w in (0, 100)
        ],
    )  # fmt: skip
    # measured (2026-11-30): 1.65 without warmup (chance: ln 8 = 2.08), 0.001 with 100 steps
    assert s["w0"]["val_loss"] > 0.25 * math.log(8)
    assert s["w100"]["val_loss"] < 0.05


def test_residual_layouts_post_norm_breaks_first_and_rezero_trains_deep(tmp_path):
    deep = ["model.depth=32", "optimizer.lr=0.01"]  # 32 blocks, 10x the LR where all train
    rezero = ["model.residual.branch_init=rezero"]
    s = _study(
        tmp_path, "residual_layouts",
        [
            Trial("post_norm", [*deep, "model.residual.layout=post_norm"]),
            Trial("branch_norm", [*deep, "model.residual.layout=branch_norm"]),
            Trial("rezero", [*deep, "model.residual.layout=none", *rezero]),
        ],
    )  # fmt: skip
    chance = math.log(10)
    assert s["post_norm"]["val_loss"] > 0.95 * chance  # no better than guessing
    assert s["branch_norm"]["val_loss"] < 0.75 * chance  # x + Norm(f(x)) trains deep
    assert s["rezero"]["val_loss"] < 0.5 * chance


# each rule at the LR that was best for it in the study (optimizers.csv)
BEST_LR = {"sgd": 0.3, "momentum": 0.1, "nesterov": 0.03, "rmsprop": 0.003, "adam": 0.01,
           "nadam": 0.003}  # fmt: skip


def test_optimizers_all_six_rules_train_once_tuned(tmp_path):
    s = _study(
        tmp_path, "optimizers",
        [Trial(r, [f"optimizer={r}", f"optimizer.lr={lr}"]) for r, lr in BEST_LR.items()],
    )  # fmt: skip
    for rule in BEST_LR:  # measured: 0.051-0.084 (2026-11-30); chance 2.3
        assert s[rule]["feasible"] and s[rule]["val_loss"] < 0.1 * math.log(10), (
            rule,
            s[rule]["val_loss"],
        )


def test_lm_warmup_post_norm_fails_where_pre_norm_trains_and_long_warmup_rescues(tmp_path):
    lm = lambda layout, lr, w: Trial(  # noqa: E731
        f"{layout}_lr{lr:g}_w{w}",
        [f"model.residual.layout={layout}", f"optimizer.lr={lr}", f"schedule.warmup_steps={w}"],
    )
    s = _study(
        tmp_path, "lm_warmup",
        [lm("post_norm", 0.003, 0), lm("pre_norm", 0.003, 0), lm("post_norm", 0.003, 150),
         lm("post_norm", 0.001, 0)],
    )  # fmt: skip
    # measured (2026-11-30): 3.26 (the unigram level, ~3.3), 2.67, 2.41, 2.56
    assert s["post_norm_lr0.003_w0"]["val_loss"] > 3.1  # post-norm: stuck at the unigram level
    assert s["pre_norm_lr0.003_w0"]["val_loss"] < 2.85  # pre-norm trains at the same LR
    assert s["post_norm_lr0.003_w150"]["val_loss"] < 2.85  # half the run as warmup rescues it
    assert s["post_norm_lr0.001_w0"]["val_loss"] < 2.85  # and post-norm trains at a lower LR


def test_lm_lr_sensitivity_attention_logits_grow_without_qk_norm_and_qk_norm_trains(tmp_path):
    lm = lambda v, lr: Trial(  # noqa: E731
        f"{v}_lr{lr:g}", [f"optimizer.lr={lr}", f"model.qk_norm={v == 'qk_norm'}"]
    )
    s = _study(tmp_path, "lm_lr_sensitivity",
               [lm(v, lr) for v in ("baseline", "qk_norm") for lr in (0.03, 0.1)])  # fmt: skip
    final = {Path(r["run_dir"]).name: r["final_val_loss"]
             for r in load_trials(tmp_path / "lm_lr_sensitivity")}  # fmt: skip
    # measured (2026-11-30): largest attention logit 828 / 35,217 without qk-norm, 8.6 / 33
    # with it (at init 0.17 / 3.6); final validation loss 2.99 / 3.11 without, 2.83 / 2.63
    # with (a context-free model: 3.31)
    for lr in (0.03, 0.1):
        base, qk = s[f"baseline_lr{lr:g}"], s[f"qk_norm_lr{lr:g}"]
        assert base["attn_logit_max_first"] < 1 < qk["attn_logit_max_first"] < 10  # at init
        assert base["attn_logit_max"] > 10 * qk["attn_logit_max"]
    assert s["baseline_lr0.03"]["attn_logit_growing"]  # the report's flag
    assert not s["qk_norm_lr0.03"]["attn_logit_growing"]
    assert s["baseline_lr0.1"]["attn_logit_max"] > 1000
    assert s["qk_norm_lr0.1"]["attn_logit_max"] < 100
    assert final["qk_norm_lr0.1"] < 2.9 < 2.95 < final["baseline_lr0.1"]  # qk-norm trains


def test_lm_depth_post_norm_breaks_at_depth_where_pre_norm_and_rezero_train(tmp_path):
    layouts = {
        "post_norm": ["model.residual.layout=post_norm"],
        "pre_norm": ["model.residual.layout=pre_norm"],
        "rezero": ["model.residual.layout=none", "model.residual.branch_init=rezero"],
    }
    runs = (("post_norm", 12), ("pre_norm", 12), ("rezero", 12), ("post_norm", 2))
    trials = [
        Trial(f"{v}_d{d}", [*layouts[v], f"model.n_layer={d}", "optimizer.lr=0.003"])
        for v, d in runs
    ]
    _study(tmp_path, "lm_depth", trials)
    final = {Path(r["run_dir"]).name: r["final_val_loss"]
             for r in load_trials(tmp_path / "lm_depth")}  # fmt: skip
    # measured (2026-11-30): 3.33 (the unigram level, ~3.31), 2.54, 2.63, 2.59
    assert final["post_norm_d12"] > 3.1  # 12-layer post-norm stops using its context
    assert final["pre_norm_d12"] < 2.85 and final["rezero_d12"] < 2.85  # these train
    assert final["post_norm_d2"] < 2.85  # and a shallow post-norm model trains at this LR


def test_lm_clipping_agc_rescues_the_failing_gpt_and_the_p90_threshold_helps(tmp_path):
    _study(tmp_path, "lm_clipping", [Trial("none", ["clipping=none"])])
    p90 = clip_threshold(tmp_path / "lm_clipping" / "none")
    s = _study(tmp_path, "lm_clipping", [
        Trial("fixed_p90", ["clipping=fixed", f"clipping.clip_threshold={p90:.4g}"]),
        Trial("agc", ["clipping=agc"]),
    ])  # fmt: skip
    final = {Path(r["run_dir"]).name: r["final_val_loss"]
             for r in load_trials(tmp_path / "lm_clipping")}  # fmt: skip
    # measured (2026-11-30): p90 5.518; final 3.34 (the unigram level, ~3.31), 2.89, 2.38;
    # on an AVX2 host (2026-12-07): p90 6.301; 3.32, 3.14, 2.38 (the runs through the step-12
    # blow-up take another path on another CPU: the p90 threshold helps, by how much moves)
    assert 1 < p90 < 20
    assert final["none"] > 3.1  # unclipped, the GPT stops using its context
    assert final["fixed_p90"] < final["none"] - 0.1  # the 90th-percentile threshold helps
    assert 0 < s["fixed_p90"]["clip_fraction"] < 0.1  # ... clipping a few updates
    assert final["agc"] < 2.8 and not s["agc"]["unstable"]


def test_edge_of_stability_sharpness_rises_to_2_over_lr_and_adams_to_38_over_lr(tmp_path):
    """The study's claim with a margin, shorter: GD at LR 0.8 (threshold 2.5) meets 95% of
    it within 60 steps and stays within 0.8-1.6x of it to step 300; Adam at LR 0.01 meets
    90% of 38 / lr within 60 steps and never passes 1.2x."""
    trials = [
        Trial("gd", ["optimizer=sgd", "optimizer.lr=0.8", "max_train_steps=300"]),
        Trial("adam", ["optimizer=adam", "optimizer.lr=0.01", "max_train_steps=100"]),
    ]
    run_trials(trials, tmp_path, ["experiment=study_edge_of_stability", *QUIET], jobs=2, threads=1)

    def ratios(name, key, limit):
        rows = list(csv.DictReader((tmp_path / name / "sharpness.csv").open()))
        return [(int(r["step"]), float(r[key]) / float(r[limit])) for r in rows if r[limit]]

    gd = ratios("gd", "sharpness", "threshold")
    reach = next(s for s, r in gd if r >= 0.95)
    assert reach <= 60
    assert all(0.8 <= r <= 1.6 for s, r in gd if s >= reach + 20)
    adam = ratios("adam", "precond_sharpness", "precond_threshold")
    assert any(r >= 0.9 for s, r in adam if s <= 60)
    assert max(r for _, r in adam) <= 1.2


def test_spike_remedies_every_remedy_keeps_the_run_and_none_does_not(tmp_path):
    """The study shortened to 500 steps (the bad batches at 200 and 450 as in the study):
    without a remedy the best validation loss is the one before the first bad batch, and
    every remedy ends with a lower one and a training loss at least 3x lower; skip-step
    skips both bad updates; the rollback run rolls back twice and its curves hold no
    spike."""
    study = runpy.run_path(str(ROOT / "experiments" / "spike_remedies" / "run.py"))
    trials = study["TRIALS"]  # the study's own trials (none, clipping, skip-step, rollback)
    assert [t.name for t in trials] == ["none", "clipping", "skip_step", "rollback"]
    base = [*study["BASE"], "max_train_steps=500", *QUIET]
    run_trials(trials, tmp_path, base, jobs=2, threads=1)
    s = {t.name: json.loads((tmp_path / t.name / "summary.json").read_text()) for t in trials}
    assert all(v["status"] == "completed" for v in s.values())
    assert s["none"]["best_step"] == 200

    def final_ema(name):
        rows = list(csv.DictReader((tmp_path / name / "stability.csv").open()))
        return float(rows[-1]["loss_ema"])

    for name in ("clipping", "skip_step", "rollback"):
        assert s[name]["val_loss"] < 0.8 * s["none"]["val_loss"], name
        assert final_ema(name) * 3 < final_ema("none"), name
    assert {200, 450} <= set(s["skip_step"]["skipped_step_list"])
    assert len(s["rollback"]["rollbacks"]) == 2
    rows = csv.DictReader((tmp_path / "rollback" / "stability.csv").open())
    assert max(float(r["loss"]) for r in rows) < 10


def test_warmup_curvature_no_warmup_crosses_the_edge_and_warmup_stays_below(tmp_path):
    """The study (its 400-step cosine schedule: a shorter run decays the LR sooner and
    changes the early steps), 12 Lanczos steps a measurement: without warmup Adam's
    preconditioned sharpness passes 38 / lr by step 60; with 100 warmup steps it stays
    below 0.8x through step 100."""
    trials = [
        Trial("no_warmup", ["schedule.warmup_steps=0", "schedule.post_warmup_steps=0"]),
        Trial("warmup_100", ["schedule.warmup_steps=100", "schedule.post_warmup_steps=200"]),
    ]
    base = ["experiment=study_warmup_curvature", "callbacks.sharpness.iterations=12", *QUIET]
    run_trials(trials, tmp_path, base, jobs=2, threads=1)

    def ratios(name):
        rows = csv.DictReader((tmp_path / name / "sharpness.csv").open())
        return [(int(r["step"]), float(r["precond_sharpness"]) / float(r["precond_threshold"]))
                for r in rows if r["precond_threshold"]]  # fmt: skip

    assert max(r for s, r in ratios("no_warmup") if s <= 60) > 1.0
    assert max(r for s, r in ratios("warmup_100") if s <= 100) < 0.8
