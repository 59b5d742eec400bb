"""Real multi-process runs on CPU (trainer=ddp_cpu: 2 processes, gloo): the same gradient
norm as one process with the same global batch, one run directory / summary / W&B run,
resume under DDP, and a Hydra multirun of DDP trials. LayerNorm models: BatchNorm's
statistics are per rank, so a BatchNorm model legitimately differs from one process.
Also: FSDP2 on CPU (trainer=fsdp_cpu) and a two-"node" torchrun launch."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import QUIET, assert_ok, run_cli
from stablelab.analysis import wandb_offline

# Equivalence across process counts is checked in float64: float32 runs agree at step 0
# but their reduction orders differ (one process vs an all-reduce of two halves), and
# training amplifies that rounding by CPU-dependent amounts (seen: 2e-4 after 5 steps on
# one CPU, 1e-7 on another). In float64 the trajectories agree far below the telemetry's
# float32 storage, so 1e-6 holds on any CPU.
F64 = ["trainer.precision=64-true"]
COMMON = [
    *QUIET,
    "model.norm=layernorm",
    "trainer.val_check_interval=10",
    "test=false",
    "plots=false",  # the runs' PNGs are drawn (once, by rank 0) in `runs` only
]


def _one_process(args: list[str], run_dir) -> None:
    """A one-process reference run, in this process (saves a CLI start-up)."""
    from conftest import compose_cfg
    from stablelab.train import train

    summary = train(compose_cfg(args, run_dir))
    assert summary["status"] == "completed", summary


def _col(run, name, file="grad_norms.csv"):
    return np.array([float(r[name]) for r in csv.DictReader((run / file).open())])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_env):
    """30 steps (float64) of one process with a global batch of 256 (``one``) and of
    ddp_cpu, 2 x 128 (``two``, with W&B and plots), run from (and into) one fresh directory.
    Shared: the two-node test compares with ``one`` and the resume test continues ``two``."""
    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    steps = ["max_train_steps=30", *F64]
    noise = ["callbacks.noise_scale.every_n_steps=10"]  # pieces of 32 in both runs
    _one_process(
        [*COMMON, *steps, *noise, "callbacks.noise_scale.pieces=8", "logger=csv",
         "data.batch_size=256"], one,
    )  # fmt: skip
    assert_ok(
        run_cli(
            [*COMMON, *steps, *TWO_INSTRUMENTS, "logger=wandb", "trainer=ddp_cpu",
             "data.batch_size=128", "plots=true", f"hydra.run.dir={two}"],
            root,
        )
    )  # fmt: skip
    return root


# the instruments of the ddp_cpu run ``two`` (the resume tests continue it with them on)
TWO_INSTRUMENTS = [
    "callbacks.noise_scale.every_n_steps=10",
    "callbacks.noise_scale.pieces=4",
    "callbacks.sharpness.every_n_steps=15",
    "callbacks.sharpness.iterations=4",
    "callbacks.sharpness.probe_examples=64",  # float64 Hessian-vector products on 1 thread
]


def test_two_processes_match_one_with_the_same_global_batch(runs):
    one, two = runs / "one", runs / "two"
    # the logged norm of the all-reduced gradient equals the one-process norm
    np.testing.assert_allclose(_col(two, "grad_norm"), _col(one, "grad_norm"), rtol=1e-6)
    # the stability monitor's loss is the mean over ranks: the global-batch loss
    np.testing.assert_allclose(
        _col(two, "loss", "stability.csv"), _col(one, "loss", "stability.csv"), rtol=1e-6
    )
    # the noise scale: the ranks' pieces of 32 and the all-reduced gradient of 256 are one
    # process's 8 pieces and its whole batch (each rank holds half of the global batch)
    for col in ("small_sq", "big_sq", "b_simple"):
        np.testing.assert_allclose(
            _col(two, col, "noise_scale.csv"), _col(one, col, "noise_scale.csv"), rtol=1e-6
        )
    assert set(_col(two, "b_big", "noise_scale.csv")) == {256.0}
    s = json.loads((two / "summary.json").read_text())
    assert s["world_size"] == 2 and s["global_batch_size"] == 256
    assert s["sharpness_measurements"] == 3  # steps 0, 15, 30, on rank 0, nothing hung
    # the thread policy: $OMP_NUM_THREADS if set, else this machine's cores split between
    # the two ranks on the node
    env = os.environ.get("OMP_NUM_THREADS")
    cores = len(os.sched_getaffinity(0))
    assert s["threads"]["intra_op"] == (int(env) if env else max(1, cores // 2))
    assert s["threads"]["inter_op"] == 1
    # one directory, written once: one summary, one W&B run, one set of checkpoints, the
    # plots and report (rank 0) in it
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]
    assert len(list(two.rglob("summary.json"))) == 1
    assert sorted(p.name for p in runs.rglob("*.png") if "wandb" not in p.parts) == [
        "grad_norm.png", "grad_norm_hist.png", "loss.png", "lr.png", "noise_scale.png",
        "sharpness.png",
    ]  # fmt: skip
    assert (two / "report.md").is_file()
    (f,) = wandb_offline.run_files(two)
    info = wandb_offline.run_info(f)
    assert {
        "optimizer:adam", "schedule:constant", "clipping:noclip", "layout:branch_norm",
        "branch_init:default",
    } <= set(info["tags"])  # fmt: skip
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "best-step000030.ckpt",
        "last.ckpt",
    ]


RESUMED_FILES = (
    "grad_norms.csv",
    "stability.csv",
    "evals.csv",
    "dense_eval.csv",
    "metrics.csv",
    "noise_scale.csv",
    "sharpness.csv",
)


def _same_files(run, ref) -> None:
    for name in RESUMED_FILES:
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    for key in ("steps", "val_loss", "best_step", "grad_norm_p90", "dense_eval_points"):
        assert a[key] == b[key], key


@pytest.mark.slow  # (make test keeps the suite under 10 minutes: DDP resumes in test-all)
def test_ddp_run_killed_mid_run_resumes_into_a_new_directory_exactly(tmp_path, runs):
    """ddp_cpu, both ranks SIGKILLed at step 17 (no handler runs), resumed from the
    checkpoint of step 10 into a new directory: the uninterrupted 2-process run's files,
    byte for byte."""
    args = [*COMMON, *F64, *TWO_INSTRUMENTS, "logger=csv", "trainer=ddp_cpu",
            "data.batch_size=128", "max_train_steps=30"]  # fmt: skip
    full, killed, resumed = runs / "two", tmp_path / "killed", tmp_path / "resumed"
    kill = ["+callbacks.kill._target_=helpers.KillAtStep", "+callbacks.kill.step=17"]
    proc = run_cli([*args, *kill, f"hydra.run.dir={killed}"], tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpt = killed / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 10
    assert_ok(run_cli([*args, f"ckpt_path={ckpt}", f"hydra.run.dir={resumed}"], tmp_path))
    _same_files(resumed, full)


@pytest.mark.slow  # ~70 s: two DDP launches (make test-all)
def test_ddp_sigterm_stops_every_rank_exits_143_and_resumes_in_place(tmp_path, runs):
    """SIGTERM to rank 0 at step 23 (a real signal): Lightning forwards it to rank 1, both
    stop after the same step, the step is checkpointed, the run exits 143; resumed in
    place with ckpt_path=auto it ends as the uninterrupted run."""
    args = [*COMMON, *F64, *TWO_INSTRUMENTS, "logger=csv", "trainer=ddp_cpu",
            "data.batch_size=128", "max_train_steps=30"]  # fmt: skip
    full, run = runs / "two", tmp_path / "run"
    kill = ["+callbacks.kill._target_=helpers.KillAtStep", "+callbacks.kill.step=23",
            "+callbacks.kill.signal=15", "+callbacks.kill.rank=0"]  # fmt: skip
    proc = run_cli([*args, *kill, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 143, proc.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["interrupted"]["signal"] == "SIGTERM"
    step = s["interrupted"]["checkpoint_step"]
    assert step == s["steps"] and step in (24, 25)  # after the step (rank 1 may see it later)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    assert_ok(run_cli([*args, "ckpt_path=auto", f"hydra.run.dir={run}"], tmp_path))
    _same_files(run, full)


@pytest.mark.parametrize(
    ("trainer", "subset"),
    [pytest.param("ddp_cpu", 301, marks=pytest.mark.slow), ("fsdp_cpu", None)],
)
def test_evaluation_across_ranks_covers_every_example_once(tmp_path, trainer, subset):
    """401 validation examples, evaluated in global batches of 400 by 2 ranks: the last
    global batch is one example, so rank 1's slice is empty. val/loss and val/acc must be
    the means over all 401 examples (not a mean of the ranks' means, which weights rank 1's
    200 examples like rank 0's 201), and likewise the test metrics. The dense evaluation
    after step 5 covers the whole split (FSDP: rank 1 still joins the forward of the empty
    slice, or rank 0 waits forever in its parameter all-gather) or exactly its first
    ``subset`` examples. Reference: the saved step-5 weights evaluated in float64 in one
    process."""
    from helpers import float64_reference

    run = tmp_path / "run"
    assert_ok(
        run_cli(
            [
                *QUIET, "model.norm=layernorm", "logger=csv", f"trainer={trainer}",
                "max_train_steps=5", "trainer.val_check_interval=5",
                "data.val_fraction=0.10025", "data.eval_batch_size=200",
                f"callbacks.dense_eval.subset={subset or 'null'}",
                f"hydra.run.dir={run}",
            ],
            tmp_path,
        )
    )  # fmt: skip
    (row,) = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["val/loss"]]
    dense = list(csv.DictReader((run / "dense_eval.csv").open()))
    assert [int(r["step"]) for r in dense] == [1, 2, 3, 4, 5]
    s = json.loads((run / "summary.json").read_text())
    for name, loss, acc, n in (
        ("val", float(row["val/loss"]), float(row["val/acc"]), None),
        ("test", s["test_loss"], s["test_acc"], None),
        ("val", float(dense[-1]["val_loss"]), float(dense[-1]["val_acc"]), subset),
    ):
        ref_loss, ref_acc, size = float64_reference(run, name, n)
        assert size == {"val": 401, "test": 1000}[name]
        assert loss == pytest.approx(ref_loss, rel=1e-5), (name, n)
        assert acc == pytest.approx(ref_acc, abs=1e-6), (name, n)
    assert int(dense[-1]["examples"]) == (subset or 401)


@pytest.mark.slow  # (multiruns and DDP each run in make test)
def test_multirun_of_ddp_trials_gives_one_directory_per_trial(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable, "-m", "stablelab.train", "-m", "optimizer.lr=0.001,0.002",
            *COMMON, "logger=wandb", "trainer=ddp_cpu", "max_train_steps=10",
            f"hydra.sweep.dir={sweep}",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (proc.stdout + proc.stderr).count("Launching 2 jobs") == 1  # children do not sweep
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert not (tmp_path / "logs").exists()  # no stray run directories from the children
    for trial, lr in (("0", 0.001), ("1", 0.002)):
        run = sweep / trial
        s = json.loads((run / "summary.json").read_text())
        assert s["status"] == "completed" and s["world_size"] == 2 and s["steps"] == 10
        assert f"lr: {lr}" in (run / "config.yaml").read_text()
        assert len(_col(run, "grad_norm")) == 10
        (f,) = wandb_offline.run_files(run)
        assert wandb_offline.run_info(f)["group"] == f"train/{sweep.name}"


@pytest.mark.filterwarnings("ignore::stablelab.callbacks.grad_norm.TooMuchClippingWarning")
def test_fsdp_on_cpu_matches_one_process_and_its_checkpoint_resumes_anywhere(tmp_path):
    """trainer=fsdp_cpu: FSDP2 in 2 gloo processes. Each rank holds half of every
    gradient (DTensor shards); the logged norm must be that of the full gradient and the
    fixed clip (active at every step) must scale every shard by the same factor, or the
    trajectory leaves the one-process run's at once (an O(1) difference). Lightning refuses
    float64 under FSDP, so: step 0 (same weights, same batch) and step 1 tightly, then the
    series with tolerances float32 meets on any CPU. Float32 reduction orders differ (a
    reduce-scatter of shards vs one sum) and training amplifies that by CPU-dependent
    amounts: measured on an AMD EPYC, up to 3.4e-3 in the norm and 2.5e-5 in the loss over
    20 steps (on another CPU, 1e-6)."""
    fsdp, one, resumed = (tmp_path / n for n in ("fsdp", "one", "resumed"))
    args = [
        *COMMON, "logger=csv", "optimizer=momentum", "clipping=fixed",
        "clipping.clip_threshold=0.5",
    ]  # fmt: skip
    assert_ok(
        run_cli(
            [*args, "trainer=fsdp_cpu", "data.batch_size=128", "max_train_steps=20",
             f"hydra.run.dir={fsdp}"],
            tmp_path,
        )
    )  # fmt: skip
    _one_process([*args, "data.batch_size=256", "max_train_steps=25"], one)
    norm, ref = _col(fsdp, "grad_norm"), _col(one, "grad_norm")[:20]
    assert (_col(fsdp, "clipped") == 1).all() and (_col(fsdp, "grad_norm_clipped") == 0.5).all()
    np.testing.assert_allclose(norm[0], ref[0], rtol=1e-6)  # same weights, same batch
    np.testing.assert_allclose(norm[1], ref[1], rtol=1e-5)  # after one clipped update
    np.testing.assert_allclose(norm, ref, rtol=3e-2)
    np.testing.assert_allclose(
        _col(fsdp, "loss", "stability.csv"), _col(one, "loss", "stability.csv")[:20], rtol=1e-3
    )
    s = json.loads((fsdp / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2
    assert len(list(fsdp.rglob("summary.json"))) == 1
    # checkpoints are single files with the full (gathered) model: a one-process run
    # resumes from one, optimizer state included, and continues the one-process run
    ckpt = fsdp / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    _one_process([*args, "data.batch_size=256", "max_train_steps=25", f"ckpt_path={ckpt}"], resumed)
    loss = _col(resumed, "loss", "stability.csv")
    assert loss[:20].tolist() == _col(fsdp, "loss", "stability.csv").tolist()  # its history
    np.testing.assert_allclose(
        loss[20:],
        _col(one, "loss", "stability.csv")[20:],
        rtol=1e-3,  # from the FSDP run's weights: its float32 drift carries over
    )


@pytest.mark.slow  # (DDP equivalence runs in make test; this is the README launch)
def test_two_node_torchrun_as_the_readme_launches_it(tmp_path, runs):
    """The README's multi-node torchrun command, with two "nodes" on this machine (one
    torchrun agent per node rank, c10d rendezvous on localhost, one gloo process each):
    Lightning takes the ranks from torchelastic, every process writes into the one run
    directory with its own Hydra log, and the run equals one process with the global batch."""
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    run, one = tmp_path / "run", runs / "one"  # one process, global batch 256, 30 steps
    steps = ["max_train_steps=20", "logger=csv"]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
        "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
        f"localhost:{port}", "-m", "stablelab.train", *COMMON, *F64, *steps, "trainer=ddp_cpu",
        "trainer.num_nodes=2", "trainer.devices=1", "data.batch_size=128",
        f"hydra.run.dir={run}", "hydra.job.name=train_rank${oc.env:RANK}",
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [*cmd[:3], "--node-rank", str(r), *cmd[3:]],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},  # as Lightning gives ddp_cpu's ranks
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    for p, out in zip(nodes, outs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert sorted(p.name for p in run.glob("train_rank*.log")) == [
        "train_rank0.log",
        "train_rank1.log",
    ]
    assert len(list(tmp_path.rglob("summary.json"))) == 1  # written once
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["world_size"] == 2 and s["global_batch_size"] == 256
    np.testing.assert_allclose(_col(run, "grad_norm"), _col(one, "grad_norm")[:20], rtol=1e-6)


@pytest.mark.slow  # (make test: FSDP's norm, clipping and resume in the test above)
def test_fsdp_adam_state_is_the_full_gradients_moments(tmp_path):
    """Adam under fsdp_cpu keeps m and v as DTensor shards; the gathered checkpoint after
    two updates must hold the moments of the full gradient, as one process with the same
    global batch computes them. Float32 reduction order differs (reduce-scatter of shards),
    and Adam's first update g / (|g| + eps) amplifies it where |g| ~ eps (measured: 7e-6 in
    a weight after one step, 1.5e-4 of max|m| after two); a sharding mistake (a rank's
    shard, a missing reduction, a double division by the world size) is off by O(1)."""
    torch = pytest.importorskip("torch")
    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    args = [*COMMON, "logger=csv", "optimizer=adam", "max_train_steps=2", "test=false"]
    assert_ok(
        run_cli(
            [*args, "trainer=fsdp_cpu", "data.batch_size=128", f"hydra.run.dir={fsdp}"],
            tmp_path,
        )
    )
    _one_process([*args, "data.batch_size=256"], one)
    np.testing.assert_allclose(_col(fsdp, "grad_norm"), _col(one, "grad_norm"), rtol=1e-5)
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False) for r in (fsdp, one))
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert len(sa) == len(sb) == len(list(b["state_dict"]))  # every parameter, whole
    for i in sb:
        assert int(sa[i]["step"]) == int(sb[i]["step"]) == 2
        for key in ("m", "v"):
            x, ref = sa[i][key].double(), sb[i][key].double()
            assert x.shape == ref.shape  # gathered, not one rank's shard
            assert (x - ref).abs().max() <= 1e-3 * ref.abs().max() + 1e-30, (i, key)


@pytest.mark.slow  # (make test: FSDP's norm, clipping and resume in the test above)
def test_agc_and_update_ratios_under_fsdp_match_one_process(tmp_path):
    """AGC with FSDP2 shards: each rank holds whole rows (dim-0 shards), so per-row norms
    are its own; a vector's norm (biases, norm gains) is reduced over the ranks. Reference:
    one process with the same global batch, plain SGD (the update is the clipped gradient
    itself, so a shard scaled by its own local norm shows in the weights), AGC at 1e-4
    (every unit clipped, vectors too). After one update every parameter must agree to
    float32 reduction-order noise; a vector clipped by its local half's norm is off by
    several percent. The norms and the clipped flag agree too."""
    torch = pytest.importorskip("torch")
    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    args = [*COMMON, "logger=csv", "optimizer=sgd", "optimizer.lr=0.5", "clipping=agc",
            "clipping.clipping=1e-4", "max_train_steps=1",
            "callbacks.update_ratio.every_n_steps=1"]  # fmt: skip
    assert_ok(
        run_cli([*args, "trainer=fsdp_cpu", "data.batch_size=128", f"hydra.run.dir={fsdp}"],
                tmp_path)
    )  # fmt: skip
    _one_process([*args, "data.batch_size=256"], one)
    for col in ("grad_norm", "grad_norm_clipped"):
        np.testing.assert_allclose(_col(fsdp, col), _col(one, col), rtol=1e-5)
    assert (_col(fsdp, "clipped") == 1).all() and (_col(one, "clipped") == 1).all()
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False) for r in (fsdp, one))
    vectors = 0
    for name, ref in b["state_dict"].items():
        if not ref.is_floating_point():
            continue
        got = a["state_dict"][name]
        assert got.shape == ref.shape, name
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=name)
        vectors += ref.ndim == 1
    assert vectors >= 4  # (the vectors that a local norm would clip wrongly are there)
    # update ratios ||delta theta|| / ||theta|| of every tensor: reduced over the shards
    ra, rb = (list(csv.DictReader((r / "update_ratios.csv").open())) for r in (fsdp, one))
    assert len(ra) == len(rb) == 1 and set(ra[0]) == set(rb[0])
    for name in rb[0]:
        np.testing.assert_allclose(float(ra[0][name]), float(rb[0][name]), rtol=1e-5, err_msg=name)


def test_sharded_strategies_refuse_whole_tensor_features(tmp_path):
    """Refused by train() before anything starts (the CLI prints the same ConfigError: see
    test_cli's bad-input test); the same overrides without FSDP are valid."""
    from conftest import compose_cfg
    from stablelab.config import ConfigError, validate
    from stablelab.train import train

    for bad, key in (("compile=true", "compile = true"),):
        out = tmp_path / bad.split("=")[0]
        with pytest.raises(ConfigError) as e:
            train(compose_cfg([*COMMON, "trainer=fsdp_cpu", bad, "logger=csv"], out))
        assert key in str(e.value) and "FSDP2Strategy" in str(e.value), str(e.value)
        assert not out.exists()  # refused before the run directory was made
        validate(compose_cfg([*COMMON, "trainer=ddp_cpu", bad, "logger=csv"], out))


@pytest.mark.gpu
@pytest.mark.parametrize("trainer", ["gpu", "ddp", "fsdp"])
def test_gpu_bf16_run(tmp_path, trainer):  # pragma: no cover - needs a GPU
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    out = tmp_path / trainer
    args = [*COMMON, f"trainer={trainer}", "max_train_steps=50", f"hydra.run.dir={out}"]
    assert_ok(run_cli([*args, "trainer.devices=1"], tmp_path))
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["feasible"]
    assert np.isfinite(_col(out, "grad_norm")).all()
    assert 0 < s["gpu_peak_memory_gib"] < torch.cuda.get_device_properties(0).total_memory / 2**30


@pytest.mark.slow
def test_language_model_under_ddp_equals_one_process_with_the_global_batch(tmp_path):
    """The GPT on Tiny Shakespeare, float64: 2 ddp_cpu ranks with 6 windows each see the
    random windows one process draws with 12 (a function of seed and step), so the
    gradient norms and losses agree; the held-out loss too."""
    lm = [*COMMON, *F64, "logger=csv", "data=shakespeare_char", "model=gpt", "model.n_layer=1",
          "model.n_head=2", "model.n_embd=32", "data.block_size=32", "max_train_steps=10",
          "callbacks.dense_eval.subset=32", "test=true"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*lm, "data.batch_size=12"], one)
    assert_ok(
        run_cli([*lm, "trainer=ddp_cpu", "data.batch_size=6", f"hydra.run.dir={two}"], tmp_path)
    )
    np.testing.assert_allclose(_col(two, "grad_norm"), _col(one, "grad_norm"), rtol=1e-6)
    np.testing.assert_allclose(
        _col(two, "loss", "stability.csv"), _col(one, "loss", "stability.csv"), rtol=1e-6
    )
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s2["world_size"] == 2 and math.isclose(
        s1["heldout_loss"], s2["heldout_loss"], rel_tol=1e-9
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::stablelab.callbacks.grad_norm.TooMuchClippingWarning")
def test_language_model_under_fsdp_matches_one_process(tmp_path):
    """The GPT under fsdp_cpu (2 ranks x 6 windows) against one process with 12: the same
    first gradient norm (same weights, same windows), then float32 tolerances (see the FSDP
    test above); the language-model monitor and the held-out loss work on sharded weights."""
    lm = [*COMMON, "logger=csv", "data=shakespeare_char", "model=gpt", "model.n_layer=1",
          "model.n_head=2", "model.n_embd=32", "data.block_size=32", "max_train_steps=10",
          "callbacks.dense_eval.subset=32", "test=true", "clipping=fixed",
          "clipping.clip_threshold=0.5", "callbacks.lm_monitor.every_n_steps=5"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*lm, "data.batch_size=12"], one)
    assert_ok(
        run_cli([*lm, "trainer=fsdp_cpu", "data.batch_size=6", f"hydra.run.dir={two}"], tmp_path)
    )
    norm, ref = _col(two, "grad_norm"), _col(one, "grad_norm")
    np.testing.assert_allclose(norm[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(norm, ref, rtol=3e-2)
    np.testing.assert_allclose(
        _col(two, "loss", "stability.csv"), _col(one, "loss", "stability.csv"), rtol=1e-3
    )
    np.testing.assert_allclose(
        _col(two, "attn_logit_max", "lm_monitor.csv"),
        _col(one, "attn_logit_max", "lm_monitor.csv"),
        rtol=1e-3,
    )
    s1, s2 = (json.loads((r / "summary.json").read_text()) for r in (one, two))
    assert s2["world_size"] == 2 and math.isclose(
        s1["heldout_loss"], s2["heldout_loss"], rel_tol=1e-3
    )


@pytest.mark.slow  # one DDP launch and a one-process reference (~60 s)
def test_skip_step_under_ddp_decides_alike_on_every_rank(tmp_path):
    """skip_spikes under ddp_cpu (2 x 128) against one process with the global batch of
    256, float64, a corrupt batch at data batch 15: both skip step 15 alone, and the
    weights agree (a rank that decided otherwise would drift from the others)."""
    args = [*COMMON, *F64, "max_train_steps=30", "logger=csv", "skip_spikes.enabled=true",
            "skip_spikes.min_history=10",
            "+callbacks.spikes._target_=stablelab.callbacks.InjectSpikes",
            "+callbacks.spikes.batches=[15]"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process([*args, "data.batch_size=256"], one)
    assert_ok(run_cli([*args, "trainer=ddp_cpu", "data.batch_size=128",
                       f"hydra.run.dir={two}"], tmp_path))  # fmt: skip
    for run in (one, two):
        s = json.loads((run / "summary.json").read_text())
        assert s["skipped_step_list"] == [15], run.name
    a = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(two / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-6, atol=1e-9)
