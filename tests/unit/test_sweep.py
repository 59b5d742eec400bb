"""The sweep verdicts on crafted summaries: lr* selection, the edge of feasibility, the
unstable LR, the warmup grid's 10% cap, the smallest stable warmup and the 5% advice, and
which fix diagnose names first."""

from __future__ import annotations

import pytest

from stablelab.analysis.sweep import (
    edge_of_feasibility,
    lr_sensitivity,
    lr_verdict,
    select_lr_star,
    smallest_stable_warmup,
    unstable_base_learning_rate,
    warmup_advice,
    warmup_grid,
)
from stablelab.workflows import default_lrs, first_fix


def row(lr, val=None, feasible=True, unstable=False, warmup=0):
    return {
        "lr": lr,
        "val_loss": val,
        "feasible": feasible,
        "unstable": unstable,
        "warmup_steps": warmup,
        "run_dir": f"run_{lr}_{warmup}",
        "diverged_at_step": None if feasible else 3,
    }


FIG7A = [  # the playbook's Figure 7a shape: feasible at low LR, best at the edge
    row(1e-4, 0.90),
    row(3e-4, 0.70),
    row(1e-3, 0.55),
    row(3e-3, None, feasible=False),
    row(1e-2, None, feasible=False),
]


def test_lr_star_is_the_best_feasible_trial_and_sits_at_the_edge():
    star = select_lr_star(FIG7A)
    assert star["lr"] == 1e-3
    assert edge_of_feasibility(FIG7A, star) is True
    assert unstable_base_learning_rate(FIG7A) == 3e-3


def test_not_at_the_edge_when_the_next_lr_is_stable_but_worse():
    rows = [row(1e-4, 0.9), row(1e-3, 0.5), row(1e-2, 0.6), row(1e-1, None, feasible=False)]
    star = select_lr_star(rows)
    assert star["lr"] == 1e-3 and edge_of_feasibility(rows, star) is False
    assert unstable_base_learning_rate(rows) == 1e-1


def test_an_unstable_but_feasible_neighbour_is_the_edge_too():
    rows = [row(1e-3, 0.5), row(1e-2, 0.45, unstable=True), row(1e-1, 0.7)]
    star = select_lr_star(rows)
    assert star["lr"] == 1e-2  # unstable trials still compete on validation loss
    assert edge_of_feasibility(rows, star) is False  # 1e-1 is stable
    rows2 = [row(1e-3, 0.4), row(1e-2, 0.45, unstable=True)]
    assert edge_of_feasibility(rows2, select_lr_star(rows2)) is True
    assert unstable_base_learning_rate(rows2) == 1e-2


def test_no_verdict_when_lr_star_is_the_largest_lr_and_none_without_feasible():
    rows = [row(1e-3, 0.6), row(1e-2, 0.5)]
    assert edge_of_feasibility(rows, select_lr_star(rows)) is None
    bad = [row(1e-2, None, feasible=False)]
    assert select_lr_star(bad) is None and edge_of_feasibility(bad, None) is None
    assert unstable_base_learning_rate(rows) is None


def test_without_a_feasible_trial_the_verdict_says_why():
    """Diverged trials call for lower LRs; trials that made no progress (the playbook's
    abnormally high loss) for a longer run or larger LRs: the verdict tells them apart."""

    def verdict(rows):
        return lr_verdict({"lr_star": None, "edge_of_feasibility": None, "rows": rows})

    diverged = {**row(1e-1, None, feasible=False), "status": "diverged"}
    stuck = {**row(1e-4, 2.3, feasible=False), "status": "no progress"}
    error = "ConfigError: Invalid model or data (...):\n  - data._target_ = 'x': float64\n"
    failed = {**row(1e-3, None, feasible=False), "status": "failed", "error": error}
    assert verdict([diverged]) == "no feasible trial: every LR diverged; sweep lower learning rates"
    text = verdict([stuck])
    assert "every LR made no progress" in text and "at lr 0.0001" in text
    assert "train longer (max_train_steps) or sweep larger learning rates" in text
    text = verdict([stuck, diverged])
    assert text.startswith("no feasible trial: 1 diverged; 1 made no progress")
    assert "lower learning rates" not in text and "between them" in text
    # an error at every LR says nothing about the LR: the error, not "lower the LR"
    text = verdict([failed, {**failed, "lr": 1e-2}])
    assert "every trial failed before it could tell anything about the learning rate" in text
    assert "data._target_ = 'x': float64" in text and "lower" not in text
    text = verdict([failed, diverged])
    assert "1 diverged; 1 failed (data._target_ = 'x': float64)" in text
    assert "sweep lower learning rates, and fix the failure" in text


@pytest.mark.parametrize(
    "max_steps,expected",
    [
        (1_000_000, [10, 1000, 10000, 100000]),  # cap 100,000: the whole grid
        (200_000, [10, 1000, 10000, 20000]),  # cap 20,000 cuts 100,000: the cap is tried
        (10_000, [10, 1000]),  # cap 1,000 is a grid value itself
        (1500, [10, 150]),
        (50, [5]),  # cap below the first value: only the cap
        (5, []),  # cap 0: nothing to try
    ],
)
def test_warmup_grid_is_capped_at_ten_percent(max_steps, expected):
    grid = warmup_grid(max_steps)
    assert grid == expected
    assert all(w <= 0.1 * max_steps for w in grid)


def test_smallest_stable_warmup_and_the_five_percent_rule():
    rows = [
        row(0.1, None, feasible=False, warmup=10),
        row(0.1, 0.6, unstable=True, warmup=100),
        row(0.1, 0.5, warmup=1000),
        row(0.1, 0.4, warmup=10000),
    ]
    assert smallest_stable_warmup(rows)["warmup_steps"] == 1000
    assert smallest_stable_warmup(rows[:2]) is None
    short = warmup_advice(400, 10_000)  # 4%
    assert "10000 + 400 = 10400" in short and "lengthen" not in short
    long = warmup_advice(1000, 10_000)  # 10%: the playbook's 10,000 + 1,000 example
    assert "10000 + 1000 = 11000" in long and "more than the playbook's 5%" in long


def test_default_lrs_are_round_half_decades_around_the_config_lr():
    assert default_lrs(3e-3) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert default_lrs(1e-3) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    assert default_lrs(0.1) == [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    # off the grid: centred on the nearest grid value in log scale (2e-3 is 2x from 1e-3
    # and 1.5x from 3e-3)
    assert default_lrs(2e-3) == default_lrs(3e-3)
    assert default_lrs(1.5e-3) == default_lrs(1e-3)  # 1.5x from 1e-3, 2x from 3e-3


def test_first_fix_follows_what_the_workflows_found():
    sweep = {"lr_star": 1e-3, "edge_of_feasibility": True}
    warm = {"warmup_steps": 100, "advice": "prepend 100 warmup steps"}
    early = {"early_instability": True, "unstable": True}
    assert first_fix({"sweep": sweep, "probe": early, "warmup": warm}).startswith(
        "learning-rate warmup: prepend 100"
    )
    mid = {"early_instability": False, "unstable": True}
    got = first_fix({"sweep": sweep, "probe": mid, "warmup": {}, "clip_threshold": 2.5})
    assert got.startswith("gradient clipping") and "clip_threshold=2.5" in got
    no_warmup = {"warmup_steps": None, "advice": "none stable"}
    got = first_fix({"sweep": sweep, "probe": early, "warmup": no_warmup, "clip_threshold": 1.0})
    assert got.startswith("gradient clipping") and "no warmup under the 10% cap" in got
    calm = {"lr_star": 1e-3, "edge_of_feasibility": False}
    assert first_fix({"sweep": calm, "probe": {"unstable": False}}).startswith("none needed")
    assert "lower the learning rate" in first_fix({"sweep": {"lr_star": None}})


def _write_summary(cmd):
    """A stand-in trial's summary.json in its run directory (hydra.run.dir of ``cmd``)."""
    import json
    from pathlib import Path

    run_dir = Path(next(c for c in cmd if c.startswith("hydra.run.dir="))[len("hydra.run.dir=") :])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "val_loss": 1.0}))
    return run_dir


def test_one_trial_per_device_at_a_time(tmp_path, monkeypatch):
    """run_trials hands each process one device of the list and never two at once (the
    trial processes are replaced by a recorder that holds its device for a moment)."""
    import threading
    import time

    from stablelab import trials, workflows

    held, seen, lock = set(), [], threading.Lock()

    class FakeProcess:  # holds its device from start to wait()'s end
        def __init__(self, cmd, stdout, stderr, env, start_new_session):
            _write_summary(cmd)
            self.dev = env["CUDA_VISIBLE_DEVICES"]
            with lock:
                assert self.dev not in held, f"device {self.dev} given to two trials at once"
                held.add(self.dev)
                seen.append(self.dev)

        def wait(self):
            time.sleep(0.05)
            with lock:
                held.discard(self.dev)
            return 0

    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")  # fresh processes: faked
    monkeypatch.setattr(trials.subprocess, "Popen", FakeProcess)
    trials = [workflows.Trial(f"t{i}") for i in range(6)]
    out = workflows.run_trials(trials, tmp_path, devices=["0", "1"], progress=False)
    assert [r["name"] for r in out] == [f"t{i}" for i in range(6)]
    assert len(seen) == 6
    assert set(seen) == {"0", "1"}  # both used: they ran side by side
    assert (tmp_path / "t0.log").read_text().startswith("CUDA_VISIBLE_DEVICES=")


def test_the_trials_warnings_are_printed_once_at_the_end(tmp_path, monkeypatch, capsys):
    """A workflow's console gets each stablelab warning of its trials' logs once, with the
    trials that gave it; Lightning's warnings, INFO lines and what the status lines already
    say (divergence) are left out. The trial processes are replaced by writers of log lines
    in Hydra's job log format."""

    from stablelab import trials, workflows

    def line(logger, level, msg):
        return f"[2026-12-06 21:30:00,000][{logger}][{level}] - {msg}\n"

    shared = "stablelab: clipping.exclude=['model.nothing'] matches no parameter"
    logs = {
        "a": [line("stablelab", "WARNING", shared), line("stablelab", "WARNING", shared)],
        "b": [
            line("stablelab.train", "WARNING", shared),
            line("stablelab", "WARNING", "stablelab: training diverged at step 12 (loss nan)"),
            line("stablelab", "INFO", "stablelab: threads: 1"),
            line("lightning.pytorch", "WARNING", "stablelab: not ours, Lightning's logger"),
            line("stablelab", "WARNING", "stablelab: data.num_workers=4 ignored in memory"),
        ],
        "c": [line("stablelab", "WARNING", shared)],
    }

    class FakeProcess:
        def __init__(self, cmd, stdout, stderr, env, start_new_session):
            name = _write_summary(cmd).name
            stdout.writelines(logs[name])
            stdout.flush()

        def wait(self):
            return 0

    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")  # fresh processes: faked
    monkeypatch.setattr(trials.subprocess, "Popen", FakeProcess)
    trial_list = [workflows.Trial(n) for n in "abc"]
    workflows.run_trials(trial_list, tmp_path, label="sweep", progress=True)
    out = capsys.readouterr().out.splitlines()
    start = out.index(
        "[sweep] the trials' warnings, each once (their .log files give the context):"
    )
    assert out[start + 1 :] == [
        "  - clipping.exclude=['model.nothing'] matches no parameter (all 3 trials)",
        "  - data.num_workers=4 ignored in memory (b)",
    ]


def test_trials_that_all_fail_before_a_summary_stop_the_workflow_with_their_message(
    tmp_path, monkeypatch, capsys
):
    """Every trial refused (exit 2, no summary.json): the workflow stops with the first
    trial's last log line and exit 2, not a traceback from an analysis of nothing. The
    trials are asked for plain progress through the environment, with no override that a
    config without the progress callback would refuse."""
    import argparse

    from stablelab import cli, trials, workflows

    seen = []

    class Refused:
        def __init__(self, cmd, stdout, stderr, env, start_new_session):
            seen.append((cmd, env.get("STABLELAB_PROGRESS")))
            stdout.write("stablelab-train: optimizer.lr: must be > 0 (got -1)\n\n")
            stdout.flush()

        def wait(self):
            return 2

    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")  # fresh processes: faked
    monkeypatch.setattr(trials.subprocess, "Popen", Refused)
    with pytest.raises(trials.TrialsFailed) as e:
        workflows.run_trials([workflows.Trial("a"), workflows.Trial("b")], tmp_path, progress=False)
    assert e.value.refused
    assert str(e.value).startswith("none of the 2 trial(s) started training")
    assert "a's log ends: stablelab-train: optimizer.lr: must be > 0 (got -1)" in str(e.value)
    assert all(env == "plain" for _, env in seen)
    assert not any("progress_bar" in arg for cmd, _ in seen for arg in cmd)

    def func(args):
        workflows.run_trials([workflows.Trial("c")], tmp_path / "again", progress=False)

    assert cli._dispatch(argparse.Namespace(command="sweep", func=func)) == 2
    assert "stablelab sweep: none of the 1 trial(s)" in capsys.readouterr().err


def test_loss_curves_from_the_stability_ema_else_the_logged_loss(tmp_path):
    from stablelab.analysis.sweep import _loss_curve

    ema, logged, neither = (tmp_path / n for n in ("ema", "logged", "neither"))
    for d in (ema, logged, neither):
        d.mkdir()
    (ema / "stability.csv").write_text(
        "step,loss,loss_ema,loss_rise,grad_norm,events\n0,2.5,2.5,0,1,\n1,nan,nan,0,1,\n"
        "2,2.0,2.25,0,1,\n"
    )
    (logged / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,9,1.75,\n0,9,,1.5\n0,19,1.25,\n"
    )
    assert _loss_curve(ema) == ([(0, 2.5), (2, 2.25)], False)  # NaN left out
    assert _loss_curve(logged) == ([(9, 1.75), (19, 1.25)], True)
    assert _loss_curve(neither) == ([], True)


def test_warnings_summary_names_at_most_three_trials_and_cuts_long_lists():
    from stablelab.trials import warnings_summary

    assert warnings_summary([], "sweep", 4) == []
    found = [(f"w{i}", [f"t{j}" for j in range(5)]) for i in range(3)]
    found.append(("x" * 20, ["t0", "t1", "t2", "t3"]))
    lines = warnings_summary(found, "probe", 6, most=2, width=10)
    assert lines == [
        "[probe] the trials' warnings, each once (their .log files give the context):",
        "  - w0 (t0, t1, t2 and 2 more)",
        "  - w1 (t0, t1, t2 and 2 more)",
        "  ... and 2 more (see the trials' .log files)",
    ]
    assert warnings_summary([("x" * 20, ["t1"])], "s", 1, width=10) == [
        "[s] the trials' warnings, each once (their .log files give the context):",
        "  - xxxxxxx... (t1)",
    ]


def sens_row(lr, final, init=7.0, feasible=True):
    return {"lr": lr, "final_val_loss": final, "initial_loss": init, "feasible": feasible}


def test_lr_sensitivity_the_papers_worked_examples():
    """Wortsman et al. (2023): the mean of min(loss(lr), loss_init) - min loss over the LRs,
    a diverged run counted at its loss at init. {4.5, 4.0, diverged (init 7.0)}:
    (0.5 + 0 + 3.0) / 3 = 7/6; {4.2, 4.0, 4.3}: (0.2 + 0 + 0.3) / 3 = 1/6."""
    diverged = [sens_row(1e-3, 4.5), sens_row(3e-3, 4.0), sens_row(1e-2, None, feasible=False)]
    assert lr_sensitivity(diverged) == pytest.approx(7 / 6, abs=1e-12)
    stable = [sens_row(1e-3, 4.2), sens_row(3e-3, 4.0), sens_row(1e-2, 4.3)]
    assert lr_sensitivity(stable) == pytest.approx(1 / 6, abs=1e-12)


def test_lr_sensitivity_caps_at_init_and_never_infinite():
    # a trial that ends above its init loss, a NaN, and a failure without an init loss
    rows = [
        sens_row(1e-3, 9.0),  # worse than init: counted at 7.0
        sens_row(3e-3, 3.0),
        sens_row(1e-2, float("nan")),  # non-finite: at init
        sens_row(3e-2, None, init=None, feasible=False),  # no init loss: the others' median
    ]
    assert lr_sensitivity(rows) == pytest.approx((4 + 0 + 4 + 4) / 4, abs=1e-12)
    assert lr_sensitivity([sens_row(1e-3, 2.0)]) == 0.0
    assert lr_sensitivity([sens_row(1e-3, None, init=None, feasible=False)]) is None


def test_add_lr_sensitivity_one_value_per_lr_sweep_none_for_a_single_lr():
    """Rows grouped by a key (here a variant): each group's value is the paper's formula
    over its own LRs; a group at one LR is no sweep (None), not 0."""
    from stablelab.analysis.sweep import add_lr_sensitivity

    a = [sens_row(1e-3, 4.5), sens_row(3e-3, 4.0), sens_row(1e-2, None, feasible=False)]
    b = [sens_row(1e-3, 4.2), sens_row(3e-3, 4.0), sens_row(1e-2, 4.3)]
    c = [sens_row(1e-2, 3.0), sens_row(1e-2, 5.0)]  # two runs, one learning rate
    rows = [{**r, "v": v} for v, g in (("a", a), ("b", b), ("c", c)) for r in g]
    add_lr_sensitivity(rows, "v")
    got = {r["v"]: r["lr_sensitivity"] for r in rows}
    assert got["a"] == pytest.approx(7 / 6, abs=1e-12)
    assert got["b"] == pytest.approx(1 / 6, abs=1e-12)
    assert got["c"] is None
    assert len({r["lr_sensitivity"] for r in rows if r["v"] == "a"}) == 1


def test_study_args_empties_the_runs_folder_unless_rebuilding_from_it(tmp_path, monkeypatch):
    """experiments/<study>/run.py: a fresh run never mixes in an old trial; --from-runs keeps
    the runs and trains nothing; --from-runs on a missing folder is refused, naming it."""
    from stablelab.workflows import study_args

    out = tmp_path / "runs"
    (out / "old_trial").mkdir(parents=True)
    monkeypatch.setattr("sys.argv", ["run.py", "--out", str(out), "--from-runs"])
    args = study_args("doc", "s")
    assert args.from_runs and (out / "old_trial").is_dir()
    monkeypatch.setattr("sys.argv", ["run.py", "--out", str(out), "--jobs", "3"])
    args = study_args("doc", "s")
    assert not args.from_runs and args.jobs == 3 and not out.exists()
    monkeypatch.setattr("sys.argv", ["run.py", "--out", str(out), "--from-runs"])
    with pytest.raises(SystemExit) as e:
        study_args("doc", "s")
    assert e.value.code == 2
    monkeypatch.chdir(tmp_path)  # the default folder is relative: never the repository's
    monkeypatch.setattr("sys.argv", ["run.py"])
    assert study_args("doc", "s").out.as_posix() == "logs/experiments/s"


def test_trial_progress_reads_the_last_plain_progress_line(tmp_path):
    from stablelab.workflows import trial_progress

    log = tmp_path / "t.log"
    assert trial_progress(log) is None  # not started
    log.write_text("cmd\n[INFO] setting up\n")
    assert trial_progress(log) is None
    log.write_text(
        "step 25/100 (25%)  loss 1.2  lr 0.003  elapsed 0:05  ETA 0:15\n"
        "[INFO] validation\n"
        "step 50/100 (50%)  loss 0.9  lr 0.003  val 0.95  elapsed 0:10  ETA 0:10\n"
    )
    assert trial_progress(log) == (50, 100, 50, "0:10")


def test_a_long_lone_trial_reports_its_quarters_in_a_log(tmp_path, capsys):
    """diagnose's probe is one trial of minutes: in a log the workflow prints where it is
    (once per quarter), instead of nothing until it ends; not for many-trial phases."""
    import threading

    from stablelab.workflows import _watch_trials

    (tmp_path / "probe_x.log").write_text("step 30/100 (30%)  loss 1  elapsed 0:03  ETA 0:07\n")
    for quiet in (False, True):
        stop = threading.Event()
        w = threading.Thread(
            target=_watch_trials,
            args=(tmp_path, ["probe_x"], "probe", None, False, quiet, stop, 0.01),
        )
        w.start()
        threading.Event().wait(0.2)  # several polls of the same line
        stop.set()
        w.join()
        out = capsys.readouterr().out
        want = [] if quiet else ["[probe] probe_x: step 30/100 (30%), ETA 0:07"]
        assert out.splitlines() == want


def test_the_fix_policy_is_a_table_of_rules_with_keys():
    from stablelab.policy import FIX_RULES, choose_fix, probe_verdict

    sweep = {"lr_star": 1e-3, "edge_of_feasibility": False}
    cases = [  # (what the workflows found, the key of the fix)
        ({"sweep": {"lr_star": None}}, "lower_lr"),
        ({"sweep": sweep, "probe": {"early_instability": True},
          "warmup": {"warmup_steps": 30, "advice": "prepend 30"}}, "warmup"),
        ({"sweep": {**sweep, "edge_of_feasibility": True}, "probe": {},
          "warmup": {"warmup_steps": 30, "advice": "prepend 30"}}, "warmup"),
        ({"sweep": sweep, "probe": {"early_instability": True},
          "warmup": {"warmup_steps": None}}, "clipping"),
        ({"sweep": sweep, "probe": {"unstable": True}}, "clipping"),
        ({"sweep": sweep, "probe": {}}, "none"),
    ]  # fmt: skip
    for result, key in cases:
        assert choose_fix(result).key == key, (result, key)
    clip = choose_fix({"sweep": sweep, "probe": {"unstable": True}, "clip_threshold": 2.5})
    assert clip.command == "clipping=fixed clipping.clip_threshold=2.5"
    assert clip.evidence == "instability at 2 x lr*"
    assert len(FIX_RULES) == 4
    probes = ({"early_instability": True, "unstable": True}, {"unstable": True}, {})
    assert [probe_verdict(p) for p in probes] == ["early_instability", "unstable_later", "stable"]


def test_overrides_may_follow_options_on_the_command_line(monkeypatch):
    """`stablelab sweep warmup --unstable-lr X key=value` (README's order): argparse stops
    the positional list at the first option; the rest is collected, and anything that is
    not an override is still refused."""
    from stablelab import cli

    seen = {}
    monkeypatch.setattr(cli, "sweep_cmd", lambda a: seen.setdefault("args", a) and 0)
    argv = ["sweep", "warmup", "a=1", "--unstable-lr", "0.01", "b=2", "--out", "x", "c=3"]
    cli.main(argv)
    ap_args = seen.get("args")
    assert ap_args is not None and ap_args.overrides == ["a=1", "b=2", "c=3"]
    assert ap_args.unstable_lr == 0.01
    with pytest.raises(SystemExit):
        cli.main(["sweep", "warmup", "--unstable-lr", "0.01", "--bogus"])


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sweep", "lr", "--lrs", "-1", "0.01"], "--lrs: must be > 0, got -1"),
        (["sweep", "lr", "--lrs", "0"], "--lrs: must be > 0, got 0"),
        (["sweep", "lr", "--lrs", "inf"], "--lrs: must be a finite number > 0, got inf"),
        (["sample", ".", "--temperature", "nan"], "--temperature: must be a finite number >= 0"),
        (["sweep", "lr", "--lrs", "0.01", "1e-2"], "--lrs: 0.01 given more than once"),
        (["sweep", "lr", "--lrs", "0.01", "--jobs", "0"], "--jobs: must be >= 1, got 0"),
        (["sweep", "lr", "--lrs", "0.01", "--threads", "-1"], "--threads: must be >= 1"),
        (["sweep", "warmup", "--unstable-lr", "0"], "--unstable-lr: must be > 0"),
        (["sweep", "warmup", "--unstable-lr", "1", "--grid", "10", "10"], "--grid: 10 given"),
        (["sweep", "warmup", "--unstable-lr", "1", "--grid", "-10"], "--grid: must be >= 0"),
        (["probe", "--lr", "0.01", "--steps", "0"], "--steps: must be >= 1, got 0"),
        (["probe", "--lr", "-0.01"], "--lr: must be > 0, got -0.01"),
        (["diagnose", "--factor", "0"], "--factor: must be > 0, got 0"),
        (["diagnose", "--probe-steps", "1e3"], "--probe-steps: not an integer: '1e3'"),
        (["diagnose", "--factor", "ten"], "--factor: not a number: 'ten'"),
        (
            ["sweep", "lr", "--lrs", "0.01", "seed=1"],
            "--lrs: not a number: 'seed=1' (an override after a list of numbers: put the "
            "overrides before the option)",
        ),
        (["clip-threshold", ".", "--percentile", "150"], "--percentile: must be >= 0 and <= 100"),
    ],
)
def test_workflow_options_are_refused_by_name_before_any_trial(monkeypatch, capsys, argv, says):
    """A bad number in a workflow's options is a usage error naming the option (exit 2),
    before any trial starts (the commands themselves are replaced: none may run)."""
    from stablelab import cli

    for name in ("sweep_cmd", "probe_cmd", "diagnose_cmd", "clip_threshold", "sample_cmd"):
        if hasattr(cli, name):
            monkeypatch.setattr(cli, name, lambda a: pytest.fail(f"ran {a}"))
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def _trial(root, name, lr, warmup, unstable, val=0.5, steps=200, **more):
    import json

    import yaml

    d = root / name
    d.mkdir(parents=True)
    summary = {"status": "completed", "feasible": True, "unstable": unstable, "val_loss": val,
               "initial_loss": 2.3, "total_steps": steps, "steps": steps}  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary))
    cfg = {"optimizer": {"lr": lr}, "schedule": {"warmup_steps": warmup}, **more}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = "".join(f"{s},{2.3 - s / 100},{2.3 - s / 120}\n" for s in range(steps))
    (d / "stability.csv").write_text("step,loss,loss_ema\n" + rows)


def test_analyze_recognises_a_warmup_sweep(tmp_path):
    """One LR, several warmups (`stablelab sweep warmup`, `-m sweep=warmup`): analysed as a
    warmup sweep (the smallest stable warmup and the playbook's advice), not as an LR sweep
    whose only LR would be 'the largest tried'."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    _trial(tmp_path, "warmup_10", 0.1, 10, unstable=True)
    _trial(tmp_path, "warmup_20", 0.1, 20, unstable=False)
    _trial(tmp_path, "warmup_40", 0.1, 40, unstable=False)
    res = analyze_lr_sweep(tmp_path)
    assert res["kind"] == "warmup" and res["warmup_steps"] == 20
    assert res["verdict"].startswith("warmup sweep at lr 0.1: the smallest warmup that trains ")
    assert "schedule.warmup_steps=20 schedule.extend_max_train_steps=true" in res["verdict"]
    assert "largest LR tried" not in res["verdict"]
    assert (tmp_path / "warmup_curves.png").is_file() and not (tmp_path / "axis_plot.png").exists()
    assert "| 10 | yes | yes | 0.5 |" in (tmp_path / "sweep_report.md").read_text()
    # two LRs: an LR sweep as before
    _trial(tmp_path, "lr_0.3", 0.3, 10, unstable=True)
    assert analyze_lr_sweep(tmp_path).get("kind") is None


def test_a_sweep_of_trials_without_the_stability_monitor_says_what_it_cannot_know(tmp_path):
    """A trial whose summary has no instability reading (no callbacks.stability, so a
    divergence would not have been caught): the verdict says how many, in the LR sweep and in
    the warmup sweep; with every trial monitored, no note."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    lr, wu = tmp_path / "lr", tmp_path / "warmup"
    _trial(lr, "lr_0.1", 0.1, 0, unstable=False)
    assert "NOTE" not in analyze_lr_sweep(lr)["verdict"]
    _trial(lr, "lr_0.3", 0.3, 0, unstable=None, val=0.7)
    verdict = analyze_lr_sweep(lr)["verdict"]
    assert verdict.endswith(
        ". NOTE: 1 of 2 trial(s) ran without the stability monitor (callbacks.stability): "
        "their divergence and instability were not measured, so 'feasible' and 'stable' "
        "there only mean that training finished"
    )
    assert verdict in (lr / "sweep_report.md").read_text()
    for w in (10, 20):
        _trial(wu, f"warmup_{w}", 0.1, w, unstable=None)
    assert "NOTE: 2 of 2 trial(s) ran without" in analyze_lr_sweep(wu)["verdict"]


def test_analyze_refuses_runs_on_different_data_and_names_other_differences(tmp_path):
    """A folder of unrelated runs (several sweeps, other experiments) is not one sweep:
    trials on different data are refused, naming the key and its values, before anything
    is written; trials that differ in something else besides LR and warmup are analysed,
    and the report and the result name what else differs (run paths are not compared)."""
    from stablelab.analysis.sweep import analyze_lr_sweep

    mnist = {"_target_": "stablelab.data.MNIST1DDataModule", "batch_size": 128}
    digits = {"_target_": "stablelab.data.DigitsDataModule", "batch_size": 128}
    mixed = tmp_path / "mixed"
    _trial(mixed, "a", 0.1, 0, False, data=mnist)
    _trial(mixed, "b", 0.3, 0, False, data=mnist)
    _trial(mixed, "c", 0.1, 0, False, data=digits)
    with pytest.raises(ValueError) as e:
        analyze_lr_sweep(mixed)
    msg = str(e.value)
    assert "not one sweep: they trained on different data" in msg
    assert '"stablelab.data.MNIST1DDataModule" (2 trials)' in msg
    assert '"stablelab.data.DigitsDataModule" (1 trial)' in msg
    assert not (mixed / "sweep_summary.csv").exists() and not (mixed / "axis_plot.png").exists()
    # one dataset, two depths and two seeds besides the LRs (and the warmup's hold)
    sweep = tmp_path / "sweep"
    for i, (lr, depth, seed) in enumerate([(0.1, 2, 1), (0.3, 2, 2), (0.1, 4, 1), (0.3, 4, 1)]):
        _trial(sweep, f"t{i}", lr, 0, False, data=mnist, model={"depth": depth}, seed=seed,
               callbacks={"model_checkpoint": {"dirpath": f"/runs/t{i}"}})  # fmt: skip
    res = analyze_lr_sweep(sweep)
    assert res["also_varied"] == "model.depth (2 values), seed (2 values)"
    report = (sweep / "sweep_report.md").read_text()  # a column for each, the trial's value
    assert "| lr | model.depth | seed | status |" in report
    assert "| 0.3 | 2 | 2 | completed |" in report and "| 0.3 | 4 | 1 | completed |" in report
    import csv

    table = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert sorted((r["lr"], r["model.depth"], r["seed"]) for r in table) == [
        ("0.1", "2", "1"), ("0.1", "4", "1"), ("0.3", "2", "2"), ("0.3", "4", "1")
    ]  # fmt: skip
    assert (
        "the trials differ in: model.depth (2 values), seed (2 values)."
        in (sweep / "sweep_report.md").read_text()
    )
    # only the swept keys differ: nothing to say
    plain = tmp_path / "plain"
    _trial(
        plain, "a", 0.1, 0, False, data=mnist, schedule={"warmup_steps": 0, "post_warmup_steps": 0}
    )
    _trial(
        plain, "b", 0.3, 5, False, data=mnist, schedule={"warmup_steps": 5, "post_warmup_steps": 10}
    )
    assert analyze_lr_sweep(plain)["also_varied"] == ""
    assert "Besides" not in (plain / "sweep_report.md").read_text()
    # trials on 1 and 2 devices: another global batch for the same data.batch_size
    devices = tmp_path / "devices"
    for name, lr, n in (("a", 0.1, 1), ("b", 0.3, 2)):
        _trial(devices, name, lr, 0, False, data=mnist, trainer={"devices": n})
    assert analyze_lr_sweep(devices)["also_varied"] == "trainer.devices (2 values)"


@pytest.mark.parametrize(
    ("overrides", "off"),
    [
        (["callbacks=none"], "callbacks.dense_eval, callbacks.stability: off"),
        (["callbacks.stability=null"], "callbacks.stability: off"),
    ],
)
def test_workflows_refuse_a_config_without_what_they_read(tmp_path, monkeypatch, overrides, off):
    """The probe reads the dense evaluation and the stability findings, the sweeps the
    latter: without them each is refused before any trial starts (diagnose too, before its
    LR sweep)."""
    from stablelab import trials, workflows
    from stablelab.constraints import ConfigError

    def no_trial(*a, **k):
        raise AssertionError("a trial was started")

    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")  # fresh processes: faked
    monkeypatch.setattr(trials.subprocess, "Popen", no_trial)
    opts = workflows.TrialOptions(overrides=["model=mlp", *overrides], progress=False)
    with pytest.raises(ConfigError, match=off + ", but stablelab probe reads"):
        workflows.probe(1e-3, tmp_path / "p", opts)
    with pytest.raises(ConfigError, match=off + ", but stablelab diagnose reads"):
        workflows.diagnose(tmp_path / "d", opts)
    # the sweeps read the stability findings (a diverging trial would read as stable)
    with pytest.raises(ConfigError, match="callbacks.stability: off, but stablelab sweep lr"):
        workflows.lr_sweep([1e-3, 3.0], tmp_path / "s", opts)
    with pytest.raises(ConfigError, match="callbacks.stability: off, but stablelab sweep warm"):
        workflows.warmup_sweep(1e-3, 100, tmp_path / "w", opts)
    assert not any((tmp_path / d).exists() for d in ("p", "d", "s", "w"))
