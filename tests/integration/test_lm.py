"""The language-model workload end to end: a short GPT run on Tiny Shakespeare learns
(held-out loss below the corpus's unigram entropy, computed here from character counts),
reports bits per character and the held-out loss as the token-weighted mean of its two
halves, samples text deterministically, and keeps the stability features working (telemetry,
dense evaluation, report, z-loss)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import Counter

import pytest

from conftest import compose_cfg
from stablelab.train import train

# a small GPT, small context: about 10 s on 2 CPU cores
LM = [
    "data=shakespeare_char",
    "model=gpt",
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=64",
    "data.block_size=32",
    "data.batch_size=32",
    "optimizer.lr=3e-3",
    "max_train_steps=200",
    "trainer.val_check_interval=100",
    "callbacks.dense_eval.subset=64",
    "callbacks.progress_bar.refresh_rate=0",
    "loss.z_loss=1e-4",
    "callbacks.lm_monitor.every_n_steps=50",
    "callbacks.update_ratio.every_n_steps=100",
    "logger=csv",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, module_env):
    out = tmp_path_factory.mktemp("lm") / "run"
    summary = train(compose_cfg([*LM, "logger=wandb"], out))  # W&B offline and CSV
    return summary, out


def unigram_entropy(text: str) -> float:
    n = len(text)
    return -sum(c / n * math.log(c / n) for c in Counter(text).values())


def test_short_run_learns_below_the_unigram_entropy(lm_run):
    from stablelab.data import CharTextDataModule

    s, run = lm_run
    assert s["status"] == "completed" and s["feasible"]
    train_text = CharTextDataModule().texts["train"]
    h = unigram_entropy(train_text)  # 3.31 nats: a model of character frequencies alone
    assert 3.2 < h < 3.4
    assert s["initial_loss"] > h  # it starts near ln 65 = 4.17
    assert s["heldout_loss"] < h - 0.3, (s["heldout_loss"], h)


def test_lm_metrics_bits_per_character_and_held_out_loss(lm_run):
    s, run = lm_run
    assert math.isclose(s["val_bpc"], s["val_loss"] / math.log(2), rel_tol=1e-12)
    assert math.isclose(s["test_bpc"], s["test_loss"] / math.log(2), rel_tol=1e-12)
    # both halves have 55,770 characters and the same number of windows: the mean
    assert math.isclose(s["heldout_loss"], (s["val_loss"] + s["test_loss"]) / 2, rel_tol=1e-12)
    assert math.isclose(s["heldout_perplexity"], math.exp(s["heldout_loss"]), rel_tol=1e-12)
    assert s["vocab_size"] == 65 and s["characters"]["train"] == 1_003_854
    header = next(csv.reader((run / "metrics.csv").open()))
    assert {"val/bpc", "test/bpc", "val/loss"} <= set(header)
    # the stability features ran on the LM: every step's norm, 25 dense points, a report
    assert len(list(csv.DictReader((run / "grad_norms.csv").open()))) == 200
    assert s["dense_eval_points"] == 25 and s["dense_eval_examples"] == 64 * 32  # characters
    assert "Verdict" in (run / "report.md").read_text()
    # the monitor's figure, in the report (its content: tests/unit/test_plots.py)
    assert (run / "lm_monitor.png").is_file()
    assert "(lm_monitor.png)" in (run / "report.md").read_text()


def test_sampling_is_deterministic_for_a_seed(lm_run, capsys):
    from stablelab.cli import main
    from stablelab.module import StableModule
    from stablelab.sample import checkpoint_of, generate

    s, run = lm_run
    module = StableModule.load_from_checkpoint(checkpoint_of(run), map_location="cpu")
    a = generate(module, "ROMEO:", 120, seed=7)
    assert a == generate(module, "ROMEO:", 120, seed=7)
    assert a != generate(module, "ROMEO:", 120, seed=8)
    assert len(a) == 120 and set(a) <= set(module.hparams["input_spec"]["vocab"])
    greedy = generate(module, "ROMEO:", 40, temperature=0)
    assert greedy == generate(module, "ROMEO:", 40, temperature=0, seed=99)  # no randomness
    assert main(["sample", str(run), "--chars", "120", "--seed", "7", "--prompt", "ROMEO:"]) == 0
    assert capsys.readouterr().out == "ROMEO:" + a + "\n"
    assert main(["sample", str(run), "--prompt", "ROMEO\u00e9"]) == 2  # not in the vocabulary
    # a checkpoint file in place of the run directory samples from that file
    last = run / "checkpoints" / "last.ckpt"
    ref = generate(StableModule.load_from_checkpoint(last, map_location="cpu"), "A", 30, seed=3)
    capsys.readouterr()
    assert main(["sample", str(last), "--chars", "30", "--seed", "3", "--prompt", "A"]) == 0
    assert capsys.readouterr().out == "A" + ref + "\n"
    assert main(["sample", str(run / "nosuch")]) == 2
    assert "no such run directory or checkpoint" in capsys.readouterr().err


def test_sample_prints_as_it_samples_and_ctrl_c_keeps_what_was_printed(lm_run):
    """A long sample's characters appear while it runs (not all at the end), and Ctrl-C
    stops it with exit code 130, leaving what was printed: the start of the same seed's
    sample, ended by a newline."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    from stablelab.module import StableModule
    from stablelab.sample import checkpoint_of, generate

    run = lm_run[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "stablelab.cli", "sample", str(run), "--chars", "1000000",
         "--seed", "3", "--prompt", "A"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    got, deadline = b"", time.monotonic() + 120
    while len(got) < 41 and time.monotonic() < deadline:  # the prompt and 40 characters
        if select.select([proc.stdout], [], [], 1.0)[0]:
            got += os.read(proc.stdout.fileno(), 4096)
    assert proc.poll() is None and len(got) >= 41, got  # printing, a million characters to go
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "interrupted" in err.decode()
    text = (got + rest).decode()
    assert text.endswith("\n") and text.startswith("A")
    k = len(text) - 2  # the sampled characters before the interruption
    assert 40 <= k < 1_000_000
    module = StableModule.load_from_checkpoint(checkpoint_of(run), map_location="cpu")
    assert text[:-1] == "A" + generate(module, "A", k, seed=3)


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [("--chars", "-5", "--chars: must be >= 0"), ("--temperature", "-1", "--temperature: must"),
     ("--temperature", "nan", "--temperature: must"), ("--top-k", "0", "--top-k: must be >= 1"),
     ("--chars", "x", "--chars: not an integer")],
)  # fmt: skip
def test_sample_refuses_bad_options_by_name(lm_run, capsys, option, value, says):
    from stablelab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["sample", str(lm_run[1]), option, value])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_sample_refuses_an_empty_prompt_and_the_api_checks_its_arguments(lm_run, capsys):
    from stablelab.cli import main
    from stablelab.module import StableModule
    from stablelab.sample import checkpoint_of, generate

    assert main(["sample", str(lm_run[1]), "--prompt", ""]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    module = StableModule.load_from_checkpoint(checkpoint_of(lm_run[1]), map_location="cpu")
    bad = [({"chars": -1}, "chars = -1"), ({"temperature": -0.5}, "temperature"),
           ({"top_k": 0}, "top_k = 0"), ({"prompt": ""}, "prompt is empty")]  # fmt: skip
    for kwargs, says in bad:
        with pytest.raises(ValueError, match=says):
            generate(module, **{"prompt": "A", **kwargs})
    assert generate(module, "A", 0) == ""  # zero characters: nothing, not an error
    # a classifier, and a token model of your own without a character vocabulary
    module.hparams["input_spec"] = {**module.hparams["input_spec"], "task": "classification"}
    with pytest.raises(ValueError, match="a classifier: nothing to sample"):
        generate(module, "A", 5)
    spec = {k: v for k, v in module.hparams["input_spec"].items() if k != "vocab"}
    module.hparams["input_spec"] = {**spec, "task": "next_token"}
    with pytest.raises(ValueError, match="a language model without a character vocabulary"):
        generate(module, "A", 5)


def test_gpt_on_classification_data_is_refused(tmp_path):
    from stablelab.config import ConfigError

    with pytest.raises(ConfigError, match="data=shakespeare_char"):
        train(compose_cfg(["model=gpt", "logger=csv"], tmp_path / "r"))
    assert not (tmp_path / "r" / "summary.json").exists()


def test_text_file_runs_and_the_checkpoint_carries_its_vocabulary(tmp_path):
    from stablelab.module import StableModule

    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 300, encoding="utf-8")
    s = train(
        compose_cfg(
            [*LM, "data=text_file", f"data.path={text}", "max_train_steps=20",
             "trainer.val_check_interval=10", "callbacks.dense_eval.every_step_until=0"],
            tmp_path / "run",
        )
    )  # fmt: skip
    assert s["status"] == "completed" and s["vocab_size"] == len(set(text.read_text()))
    module = StableModule.load_from_checkpoint(s["best_checkpoint"], map_location="cpu")
    assert module.hparams["input_spec"]["vocab"] == "".join(sorted(set(text.read_text())))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["heldout_loss"] > 0
    assert s["data_sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()


def test_a_text_that_changed_since_training_is_refused_or_named(tmp_path, caplog, capsys):
    """A text_file run's checkpoint against its file edited afterwards: characters that
    make another vocabulary are refused (every character would map to another token),
    naming the characters; the same vocabulary in another text is evaluated with a
    warning and summary.json's data_changed (both sha256s), and a resume on it lists the
    file among its changed settings."""
    from stablelab.cli import main as cli_main
    from stablelab.evaluate import evaluate

    text = tmp_path / "poem.txt"
    line = "the quick brown fox jumps over the lazy dog\n"
    text.write_text(line * 300, encoding="utf-8")
    args = [*LM, "data=text_file", f"data.path={text}", "max_train_steps=10",
            "trainer.val_check_interval=10", "callbacks.dense_eval.every_step_until=0",
            "plots=false"]  # fmt: skip
    s = train(compose_cfg(args, tmp_path / "run"))
    ckpt, before = s["best_checkpoint"], hashlib.sha256(text.read_bytes()).hexdigest()
    text.write_text(line.replace("q", "Q") * 300, encoding="utf-8")
    assert cli_main(["eval", ckpt, "logger=csv", "--out", str(tmp_path / "e1")]) == 2
    err = capsys.readouterr().err
    assert f"data.path = '{text}': its training part gives another character vocabulary" in err
    assert "without 'q'; with 'Q'" in err and not (tmp_path / "e1").exists()
    text.write_text("the lazy dog jumps over the quick brown fox\n" * 300, encoding="utf-8")
    after = hashlib.sha256(text.read_bytes()).hexdigest()
    with caplog.at_level("WARNING", logger="stablelab"):
        e = evaluate(ckpt, ["logger=csv"], str(tmp_path / "e2"))
    assert e["evaluated_checkpoint"]["data_changed"] == {"trained_on": before, "now": after}
    assert "the data file is not the one" in caplog.text
    assert "evaluated on another data file" in (tmp_path / "e2" / "report.md").read_text()
    r = train(compose_cfg([*args, "max_train_steps=20", f"ckpt_path={ckpt}"], tmp_path / "r"))
    assert r["resumed_from"]["changed"]["data (sha256 of the file)"] == [before, after]


def test_no_held_out_loss_from_part_of_the_held_out_text(tmp_path):
    """The held-out loss is the whole held-out text's (nanoGPT's number): a test limited to
    its first batch gives test_loss and test_bpc for that batch, and no held-out loss."""
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 300, encoding="utf-8")
    s = train(
        compose_cfg(
            [*LM, "data=text_file", f"data.path={text}", "max_train_steps=10",
             "trainer.val_check_interval=10", "callbacks.dense_eval.every_step_until=0",
             "data.eval_batch_size=4", "+trainer.limit_test_batches=1"],
            tmp_path / "run",
        )
    )  # fmt: skip
    assert s["status"] == "completed"
    assert s["eval_subset"]["test"]["batches"] == 1 and s["eval_subset"]["test"]["of"] > 1
    assert "val" not in s["eval_subset"]
    assert math.isclose(s["test_bpc"], s["test_loss"] / math.log(2), rel_tol=1e-12)
    assert "heldout_loss" not in s and "heldout_bpc" not in s


def test_lm_monitor_matches_a_float64_recomputation(lm_run):
    """lm_monitor.csv's last row (step 200: the weights of last.ckpt): the max attention
    logit of each layer, recomputed here in float64 from the qkv weights and the input of
    each attention branch (q.k / sqrt(d) within the causal mask), and the mean and max
    log Z of the output logits, on the first 16 validation windows."""
    import torch

    from stablelab.data import CharTextDataModule
    from stablelab.module import StableModule

    s, run = lm_run
    rows = list(csv.DictReader((run / "lm_monitor.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 50, 100, 150, 200]  # 0: at initialisation
    last = {k: float(v) for k, v in rows[-1].items()}
    module = StableModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt").double()
    module.eval()
    dm = CharTextDataModule(block_size=32)
    dm.setup()
    x = dm._tensors["val"][0][:16]
    inputs = {}
    attn = [(n, m) for n, m in module.named_modules() if type(m).__name__ == "CausalSelfAttention"]
    for name, m in attn:
        m.register_forward_pre_hook(lambda mod, a, name=name: inputs.update({name: a[0]}))
    with torch.no_grad():
        logz = torch.logsumexp(module(x), -1)
    assert math.isclose(last["logz_mean"], logz.mean().item(), rel_tol=1e-4, abs_tol=1e-5)
    assert math.isclose(last["logz_max"], logz.max().item(), rel_tol=1e-4)
    for name, m in attn:
        h = inputs[name]
        b, t, c = h.shape
        q, k, _ = (h @ m.qkv.weight.T).split(c, -1)
        q = q.view(b, t, m.n_head, -1).transpose(1, 2)
        k = k.view(b, t, m.n_head, -1).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / math.sqrt(c // m.n_head)
        ref = logits.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -1e30).max().item()
        key = f"attn_logit_max/{name.removeprefix('model.')}"
        assert math.isclose(last[key], ref, rel_tol=1e-4), (key, last[key], ref)
    assert last["attn_logit_max"] == max(
        v for k, v in last.items() if k.startswith("attn_logit_max/")
    )
    assert s["attn_logit_max_last"] == last["attn_logit_max"] and not s["attn_logit_growing"]
    assert s["logz_mean_last"] == last["logz_mean"]


@pytest.mark.slow  # (the workflows run for real in make test on the MLP: test_workflows.py)
def test_diagnose_on_the_language_model(tmp_path):
    """The playbook's workflow on the GPT: LR sweep (LR 30 diverges: infeasible), the 2x-lr*
    probe, the warmup sweep and the clip threshold, each a real run of the LM."""
    import subprocess
    import sys

    tiny = ["data=shakespeare_char", "model=gpt", "model.n_layer=1", "model.n_head=2",
            "model.n_embd=32", "data.block_size=32", "data.batch_size=16",
            "callbacks.dense_eval.subset=32", "max_train_steps=20", "logger=csv",
            "trainer.val_check_interval=10", "plots=false"]  # fmt: skip
    out = tmp_path / "diag"
    proc = subprocess.run(
        [sys.executable, "-m", "stablelab.cli", "diagnose", *tiny, "--lrs", "0.01", "30",
         "--probe-steps", "5", "--jobs", "2", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "diagnosis.md").read_text()
    for section in ("## 1. LR sweep", "## 2. Stability probe", "## 3. Warmup sweep",
                    "## 4. Clip threshold"):  # fmt: skip
        assert section in text, section
    trials = {
        p.parent.name: json.loads(p.read_text()) for p in (out / "lr_sweep").glob("*/summary.json")
    }
    assert set(trials) == {"lr_0.01", "lr_30"}
    assert not trials["lr_30"]["feasible"] and trials["lr_30"]["status"] == "diverged"
    assert trials["lr_0.01"]["feasible"] and trials["lr_0.01"]["heldout_loss"] < math.log(65)
    rows = list(csv.DictReader((out / "lr_sweep" / "sweep_summary.csv").open()))
    assert sorted(float(r["lr"]) for r in rows) == [0.01, 30]
    (probe,) = (out / "probe").glob("probe_*/")
    assert probe.name == "probe_lr_0.02"  # 2 x lr*
    assert len(list(csv.DictReader((probe / "dense_eval.csv").open()))) == 5


def test_wandb_offline_run_has_the_language_model_metrics(lm_run):
    """The LM's metrics reach W&B (a real offline run): bits per character per evaluation,
    the monitor's signals every 50 steps, and the held-out loss in the run summary."""
    from stablelab.analysis import wandb_offline

    s, run = lm_run
    (f,) = wandb_offline.run_files(run)
    history = wandb_offline.history(f)
    bpc = [h["val/bpc"] for h in history if "val/bpc" in h]
    losses = [h["val/loss"] for h in history if "val/loss" in h]
    assert len(bpc) >= 2 and all(math.isclose(b, v / math.log(2), rel_tol=1e-6)
                                 for b, v in zip(bpc, losses, strict=True))  # fmt: skip
    steps = [h["trainer/global_step"] for h in history if "lm/attn_logit_max" in h]
    assert steps == [0, 50, 100, 150, 200]  # at init too (W&B's own _step counts calls)
    summary = wandb_offline.summary(f)
    assert math.isclose(summary["summary/heldout_loss"], s["heldout_loss"], rel_tol=1e-9)


def test_update_ratios_per_gpt_parameter(lm_run):
    """The update-to-weight ratio (its formula is tested in test_telemetry) on the GPT: one
    column per parameter tensor, the tied head counted once (as the token embedding), a
    finite positive ratio for each at the measured updates."""
    from stablelab.module import StableModule

    s, run = lm_run
    rows = list(csv.DictReader((run / "update_ratios.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 100]  # the updates after 0 and 100 steps
    module = StableModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    names = [n.removeprefix("model.") for n, _ in module.named_parameters()]
    assert set(rows[0]) - {"step"} == set(names) and "tok.weight" in names
    assert not any(n.startswith("head.") for n in names)  # tied to tok.weight
    for r in rows:
        values = [float(r[n]) for n in names]
        assert all(0 < v < 1 for v in values), r
    assert s["update_ratio_max"] == max(float(r[n]) for r in rows for n in names)
