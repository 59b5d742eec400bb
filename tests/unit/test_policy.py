"""The per-run reading (stablelab.policy.READING_RULES) on crafted runs: which findings,
at which step, with which command; asserted on those fields, not on the prose."""

from __future__ import annotations

from stablelab.analysis.report import render
from stablelab.policy import READING_RULES, reading

CFG = {
    "optimizer": {"_target_": "stablelab.optim.Adam", "lr": 0.01},
    "schedule": {"warmup_steps": 0, "max_train_steps": 1000},
    "clipping": {"_target_": "stablelab.optim.clipping.NoClip"},
    "model": {"residual": {"layout": "branch_norm", "branch_init": "rezero"}},
}
STABLE = {
    "unstable": False,
    "diverged": False,
    "first_instability_step": None,
    "total_steps": 1000,
    "loss_spikes": 0,
    "grad_norm_spikes": 0,
    "loss_rises": 0,
    "too_much_clipping": False,
    "recommended_clip_threshold": 1.234,
}


def _read(summary, cfg=CFG, events=()):
    return {f.key: f for f in reading({**STABLE, **summary}, cfg, list(events))}


def _keys(summary, cfg=CFG, events=()):
    return [f.key for f in reading({**STABLE, **summary}, cfg, list(events))]


def test_every_rule_key_is_unique_and_every_finding_carries_its_rules_key():
    keys = [r.key for r in READING_RULES]
    assert len(keys) == len(set(keys))
    s = {"unstable": True, "diverged": True, "diverged_at_step": 3, "first_instability_step": 3,
         "too_much_clipping": True, "attn_logit_growing": True, "logz_drifting": True}  # fmt: skip
    mom = {**CFG, "optimizer": {"_target_": "x.Momentum", "lr": 0.1},
           "model": {"residual": {"layout": "post_norm"}}}  # fmt: skip
    for f in reading({**STABLE, **s}, mom, [(3, "diverged"), (900, "loss_spike")]):
        assert f.key in keys and f.evidence and f.text.startswith(f.evidence)


def test_reading_stable_run():
    (f,) = reading(STABLE, CFG)
    assert f.key == "stable" and f.step is None
    assert f.command == "callbacks.dense_eval.every_step_until=500"


def test_reading_early_divergence_names_warmup_and_infeasible():
    s = {"unstable": True, "diverged": True, "diverged_at_step": 3, "first_instability_step": 3}
    keys = _keys(s, events=[(3, "diverged")])
    assert keys[:2] == ["infeasible", "warmup"] and "clipping" not in keys
    found = _read(s, events=[(3, "diverged")])
    assert found["infeasible"].step == 3 and found["warmup"].step == 3
    assert found["warmup"].command == "stablelab sweep warmup --unstable-lr 0.01 --factor 1"
    # the 10% cap of max_train_steps (1000) is named
    assert "(here 100)" in found["warmup"].fix


def test_reading_mid_run_spikes_name_clipping_with_the_p90_threshold():
    s = {"unstable": True, "first_instability_step": 600, "loss_spikes": 2}
    found = _read(s, events=[(600, "loss_spike"), (610, "loss_spike")])
    assert "clipping" in found and "warmup" not in found
    assert found["clipping"].step == 600
    assert found["clipping"].command == "clipping=fixed clipping.clip_threshold=1.234"


def test_reading_mid_run_divergence_names_clipping_not_warmup():
    s = {"unstable": True, "diverged": True, "diverged_at_step": 700, "first_instability_step": 700}
    keys = _keys(s, events=[(700, "diverged")])
    assert keys[0] == "infeasible" and "clipping" in keys and "warmup" not in keys


def test_reading_an_early_sign_and_a_later_event_name_both_in_the_playbooks_order():
    s = {"unstable": True, "first_instability_step": 20, "loss_spikes": 1, "loss_rises": 1}
    found = _read(s, events=[(20, "loss_rise"), (700, "loss_spike")])
    keys = list(found)
    assert keys.index("warmup") < keys.index("clipping")
    assert found["warmup"].step == 20 and found["clipping"].step == 700
    # the boundary: step 100 of 1000 is no longer early (EARLY_FRACTION = 10%)
    assert "warmup" not in _read({"unstable": True, "first_instability_step": 100})
    assert "warmup" in _read({"unstable": True, "first_instability_step": 99})


def test_reading_stable_run_mentions_gradient_outliers():
    (f,) = reading({**STABLE, "grad_norm_spikes": 3, "first_grad_norm_spike_step": 69}, CFG)
    assert f.key == "stable" and f.step == 69


def test_reading_a_set_threshold_above_the_p90_is_lowered_to_it():
    s = {"unstable": True, "first_instability_step": 500}
    cfg = {**CFG, "clipping": {"_target_": "x.FixedNorm", "clip_threshold": 5.0}}
    found = _read(s, cfg, [(500, "loss_spike")])
    assert found["clipping"].command == "clipping.clip_threshold=1.234"  # 1.234 < 5
    assert "lower_lr" not in found
    unmeasured = _read({**s, "recommended_clip_threshold": None}, cfg, [(500, "loss_spike")])
    assert unmeasured["clipping"].command is None
    assert "clipping is on at 5: lower the threshold." in unmeasured["clipping"].fix


def test_reading_too_much_clipping_says_lower_the_lr_and_never_to_lower_the_threshold():
    # threshold 0.1 below the p90 1.234: "lower the threshold" would be the wrong way
    s = {"unstable": True, "first_instability_step": 500, "too_much_clipping": True,
         "grad_norm_p50": 0.4}  # fmt: skip
    cfg = {**CFG, "clipping": {"_target_": "x.FixedNorm", "clip_threshold": 0.1}}
    found = _read(s, cfg, [(500, "loss_spike")])
    assert "lower_lr" in found and "last_resort" not in found
    assert found["clipping"].command is None
    assert found["lower_lr"].command == "clipping.clip_threshold=1.234"  # raised to the p90
    # the median update was scaled by 0.1 / 0.4 = 0.25: like a base LR of 0.01 * 0.25
    assert "by 0.25" in found["lower_lr"].fix and "to 0.0025 would" in found["lower_lr"].fix


def test_reading_a_stable_run_clipped_more_than_half_the_time_says_so_first():
    # the playbook's > 50% rule holds whether or not the run is unstable (nanoGPT's CPU
    # recipe: clip 1.0 against a median norm of ~1.6 clipped 92% of the updates)
    s = {"too_much_clipping": True, "clip_fraction": 0.92, "grad_norm_p50": 1.6,
         "grad_norm_spikes": 3, "first_grad_norm_spike_step": 785}  # fmt: skip
    cfg = {**CFG, "clipping": {"_target_": "x.FixedNorm", "clip_threshold": 1.0}}
    found = _read(s, cfg)
    assert list(found) == ["lower_lr", "stable"]
    assert "nothing to fix" not in found["stable"].evidence
    assert "90th percentile" not in found["stable"].evidence  # clipping is on already
    assert found["lower_lr"].command == "clipping.clip_threshold=1.234"
    assert "by 0.62" in found["lower_lr"].fix  # 1.0 / 1.6 = 0.625
    # a threshold above the median scales nothing typical: no equivalent LR is claimed
    high = _read({**s, "grad_norm_p50": 0.9}, cfg)
    assert "scaled the typical update" not in high["lower_lr"].fix
    # without clipping on, the stable finding offers it for the spikes
    (plain,) = reading({**STABLE, "grad_norm_spikes": 3, "first_grad_norm_spike_step": 7}, CFG)
    assert "nothing to fix" in plain.evidence and "90th percentile" in plain.evidence


def test_too_much_clipping_quotes_a_window_peak_only_where_one_was_measured():
    base = {"unstable": True, "first_instability_step": 500, "too_much_clipping": True,
            "clip_fraction": 0.67}  # fmt: skip
    short = _read({**base, "clip_fraction_recent_max": None, "clip_fraction_window": 100})
    assert "0.67" in short["lower_lr"].evidence and "up to" not in short["lower_lr"].evidence
    full = _read({**base, "clip_fraction_recent_max": 0.91, "clip_fraction_window": 100})
    assert "up to 0.91 over 100 consecutive steps" in full["lower_lr"].evidence


def test_reading_residual_and_optimizer_suggestions_only_when_unstable():
    post = {**CFG, "model": {"residual": {"layout": "post_norm", "branch_init": "default"}}}
    s = {"unstable": True, "first_instability_step": 5}
    found = _read(s, post, [(5, "loss_rise")])
    assert found["residual_layout"].command == "model.residual.layout=branch_norm"
    assert "residual_init" not in found  # post-norm: the layout comes first
    pre = {**CFG, "model": {"residual": {"layout": "pre_norm", "branch_init": "default"}}}
    assert _read(s, pre)["residual_init"].command == "model.residual.branch_init=rezero"
    assert "residual_init" not in _read(s)  # rezero already
    assert "residual_init" not in _read(s, {**CFG, "model": {"residual": True}})  # not ours
    mom = {**CFG, "optimizer": {"_target_": "stablelab.optim.Momentum", "lr": 0.1}}
    assert _read(s, mom)["optimizer"].command == "optimizer=adam"
    assert _keys({}, cfg=post) == _keys({}, cfg=mom) == ["stable"]


def test_reading_without_telemetry_says_so_and_nothing_else():
    assert [f.key for f in reading({"status": "completed"}, CFG)] == ["no_telemetry"]
    assert _keys({"status": "failed", "error": "E"}) == ["failed", "stable"]
    s = {"status": "failed", "error": "E", "steps": 7}
    found = reading(s, CFG)
    assert [f.key for f in found] == ["failed", "no_telemetry"]
    assert "after 7 steps" in found[0].text and "callback was off" in found[1].text
    # stopped before its first update: no telemetry because nothing trained, not because
    # the callback was off
    found = reading({"status": "failed", "error": "E", "steps": 0}, CFG)
    assert [f.key for f in found] == ["failed", "no_telemetry"]
    assert "before its first update" in found[0].text
    assert "No update was trained" in found[1].text and found[1].command is None


def test_reading_flags_the_language_model_monitors_and_how_a_run_ended():
    lm = {"attn_logit_growing": True, "attn_logit_growth": 14.0, "attn_logit_max_first": 5.0,
          "attn_logit_max": 70.0, "logz_drifting": True, "logz_abs_max": 31.0}  # fmt: skip
    found = _read(lm)
    assert list(found) == ["attention_logits", "logz", "stable"]
    assert found["attention_logits"].command == "model.qk_norm=true"
    assert found["logz"].command == "loss.z_loss=1e-4"
    assert _keys({**lm, "attn_logit_growing": False, "logz_drifting": False}) == ["stable"]
    ended = {"status": "interrupted", "resume_command": "stablelab-train x ckpt_path=auto",
             "interrupted": {"signal": "SIGTERM", "step": 40, "checkpoint": "c.ckpt",
                             "checkpoint_step": 40}}  # fmt: skip
    (first, *_) = reading({**STABLE, **ended}, CFG)
    assert first.key == "interrupted" and first.step == 40
    assert first.command == "stablelab-train x ckpt_path=auto"
    assert [
        f.key for f in reading({"evaluated_checkpoint": {"checkpoint": "c", "step": 9}}, CFG)
    ] == ["evaluation"]


def test_the_report_renders_every_finding(tmp_path):
    s = {"unstable": True, "first_instability_step": 20, "loss_spikes": 1}
    findings = reading({**STABLE, **s}, CFG, [(20, "loss_rise"), (700, "loss_spike")])
    md = render({**STABLE, **s}, CFG, findings, tmp_path)
    for f in findings:
        assert f"- {f.text}" in md


def test_reading_reports_the_edge_of_stability_and_the_noise_scale():
    curv = {"sharpness_measurements": 5, "sharpness_above_threshold": 2,
            "sharpness_first_above_step": 40, "sharpness_max_ratio": 1.3}  # fmt: skip
    found = _read(curv)
    assert list(found) == ["curvature", "stable"] and found["curvature"].step == 40
    pre = {"sharpness_measurements": 5, "sharpness_above_threshold": 0,
           "precond_sharpness_above_threshold": 1,
           "precond_sharpness_first_above_step": 70}  # fmt: skip
    assert _read(pre)["curvature"].step == 70
    assert "curvature" not in _read({"sharpness_measurements": 5, "sharpness_above_threshold": 0})
    # the noise scale against the batch: below, near, above
    for noise, words in ((2000.0, "well below"), (150.0, "near"), (10.0, "well above")):
        f = _read({"noise_scale": noise, "global_batch_size": 128})["noise_scale"]
        assert words in f.fix
    assert "noise_scale" not in _read({})


def test_reading_lists_the_skipped_updates():
    cfg = {**CFG, "skip_spikes": {"enabled": True, "window": 128, "zscore": 6.0}}
    f = _read({"skipped_steps": 2, "skipped_step_list": [70, 300]}, cfg)["skip_step"]
    assert f.step == 70 and "70, 300" in f.evidence
    assert "skip_step" not in _read({"skipped_steps": 0, "skipped_step_list": []}, cfg)


def test_reading_lists_the_rollbacks_first():
    rb = [{"diverged_at_step": 47, "to_step": 40, "skip_batches": 30, "lr_factor": 0.5}]
    found = _read({"rollbacks": rb})
    assert list(found)[0] == "rollback" and found["rollback"].step == 47
    assert "back to step 40, 30 batches skipped" in found["rollback"].evidence


def test_the_diagnosis_says_whose_clip_threshold_the_probe_findings_quote(tmp_path):
    """diagnosis.md quotes the probe run's findings; when one of them carries a clip
    threshold (the probe's own norms at 2 x lr*), a line says that section 4's threshold
    (from lr*'s norms) is the one to start from; without one, no such line."""
    from stablelab.analysis.diagnosis import render_diagnosis

    sweep = {"verdict": "lr* = 0.01 ...", "infeasible": 0, "unstable": 1, "curves": None}
    probe = {"lr": 0.02, "total_steps": 500, "run_dir": str(tmp_path / "probe" / "p"),
             "unstable": True, "findings": [
                 ("clipping", "clip: `clipping=fixed clipping.clip_threshold=0.6941`"),
                 ("last_resort", "a lower learning rate")]}  # fmt: skip
    result = {"sweep": sweep, "probe": probe, "warmup": None, "lrs": [0.01, 0.02],
              "first_fix": "clipping", "clip_threshold": 0.5331}  # fmt: skip
    text = render_diagnosis(result, tmp_path)
    note = "the clip threshold to start from is section 4's, from lr*'s gradient norms"
    assert note in text and text.index(note) < text.index("clip_threshold=0.6941")
    assert "**0.5331**" in text.split("## 4. Clip threshold")[1]
    probe["findings"] = probe["findings"][1:]
    assert note not in render_diagnosis(result, tmp_path)


def test_a_probes_advice_is_for_the_run_it_stands_in_for(tmp_path):
    """The probe trains 500 steps at 2 x lr* for a longer run: its warmup advice names 10%
    of that run's length (advise_for_steps), not of the probe's own."""
    import json

    import yaml

    from stablelab.analysis.report import findings_for

    s = {**STABLE, "status": "completed", "unstable": True, "first_instability_step": 3}
    (tmp_path / "summary.json").write_text(json.dumps(s))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CFG))  # max_train_steps 1000
    _, own = findings_for(tmp_path)
    _, longer = findings_for(tmp_path, advise_for_steps=15000)
    assert "(here 100)" in {f.key: f for f in own}["warmup"].fix
    assert "(here 1500)" in {f.key: f for f in longer}["warmup"].fix
