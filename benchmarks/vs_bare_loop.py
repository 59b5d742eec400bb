"""stablelab-train against a bare PyTorch loop doing the same work, timed side by side.

    python benchmarks/vs_bare_loop.py [--workload default|lm] [--steps N] [--repeats 3]
        [--threads N] [--device cpu|cuda]

``--device cuda``: both on one GPU, stablelab with ``trainer=gpu`` (bf16-mixed, not
deterministic), the loop in bf16 autocast.

``--workload default`` is the default experiment (``stablelab-train`` with no overrides:
the 1-D ResNet on MNIST-1D, batch 128, the playbook's Adam at 3e-3, 1,500 steps). The bare
loop does its work: the same model class and update rule, batches of 128 from a fresh
permutation of the 3,600 training examples every epoch (the last batch of an epoch
smaller), one sanity batch, the whole validation split (400) after each of the first 25
updates and after every 100th, the best model saved when validation improves, the test
split (1,000) on the best model at the end; BatchNorm in train mode while training and eval
mode while evaluating; ``torch.use_deterministic_algorithms(True)`` as the experiment's
``trainer.deterministic``.

``--workload lm`` is ``experiment=shakespeare_char_cpu`` (the 4-layer GPT on Tiny
Shakespeare, batch 12 x 64 characters, the playbook's Adam with decoupled weight decay 0.1,
100 warmup steps then cosine to 1e-4, clipping at 1.0). The bare loop below uses no
Lightning, Hydra, callbacks, loggers or progress bar; it does the experiment's work with
the same model class, update rule and schedule function:

* training: ``--steps`` updates on random windows of 65 characters of the first 90% of the
  text (forward, cross-entropy, backward, ``clip_grad_norm_``, step, schedule);
* evaluation, the same as the experiment's: one sanity batch before training, the first 128
  validation windows after each of the first 25 updates (dense early evaluation), every
  validation window after every 250th update, the best model saved (model and optimizer,
  ``torch.save``) when validation improves, and the test windows on the best model at the
  end.

stablelab-train runs with everything the experiment has on: W&B (offline) and CSV loggers,
gradient-norm and stability telemetry, the language-model monitor every 50 steps, dense
evaluation, checkpoints (best and last), the progress bar, the end-of-run plots and report.

Both run as fresh processes, alternating, ``--repeats`` times each; the table gives the
medians of the whole process (start to exit: imports, data, training, evaluation,
writing; its wall time and its CPU time, which another tenant's load disturbs less) and of
fit + test (stablelab: the summary's ``wall_seconds``; the loop: from its
sanity batch to the end of its test evaluation), and their ratios. Pin
``--threads`` (both processes get the same ``OMP_NUM_THREADS``) on a shared machine. Each
row also gives the held-out loss both reached (the loop's is an independent reimplementation
of the experiment: equal within noise if stablelab trains what it says).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LM = {
    "experiment": "shakespeare_char_cpu",
    "block": 64, "batch": 12, "eval_batch": 128, "n_layer": 4, "n_head": 4, "n_embd": 128,
    "lr": 1e-3, "beta2": 0.99, "weight_decay": 0.1, "warmup": 100, "final": 0.1, "clip": 1.0,
    "dense_until": 25, "dense_subset": 128, "val_every": 250,
}  # fmt: skip


DEFAULT = {
    "experiment": "mnist1d_resnet",
    "batch": 128, "eval_batch": 1000, "lr": 3e-3, "val_fraction": 0.1, "num_samples": 5000,
    "generator_seed": 42, "split_seed": 0, "dense_until": 25, "val_every": 100,
    "default_steps": 1500,
}  # fmt: skip


def _device():
    """The bare loop's device and autocast context: ``--device cuda`` runs it on the GPU in
    bf16 autocast (as ``trainer=gpu``'s ``bf16-mixed``), nondeterministic as that config."""
    import contextlib

    import torch

    dev = torch.device(os.environ.get("STABLELAB_BENCH_DEVICE", "cpu"))
    if dev.type == "cuda":
        return dev, lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    torch.use_deterministic_algorithms(True)  # trainer=cpu's deterministic: true
    return dev, contextlib.nullcontext


def mnist1d_arrays(data_dir: Path) -> dict:
    """MNIST-1D as the experiment has it, without stablelab's data code: the generator's
    output (read from stablelab's cache file when there, so that neither side pays for the
    generation), the validation split carved out of the training part by a seeded
    permutation."""
    import hashlib

    import numpy as np

    c = DEFAULT
    args = {"num_samples": c["num_samples"], "seed": c["generator_seed"]}
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = data_dir / f"mnist1d-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        a = get_dataset_args()
        a.num_samples, a.seed = c["num_samples"], c["generator_seed"]
        raw = make_dataset(a)
    n = len(raw["y"])
    perm = np.random.default_rng(c["split_seed"]).permutation(n)
    k = int(round(n * c["val_fraction"]))
    keep, val = np.sort(perm[k:]), np.sort(perm[:k])
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return {
        "train": (f32(raw["x"][keep]), i64(raw["y"][keep])),
        "val": (f32(raw["x"][val]), i64(raw["y"][val])),
        "test": (f32(raw["x_test"]), i64(raw["y_test"])),
    }


def bare_default(steps: int, seed: int, out: Path) -> dict:
    """The default experiment as a plain PyTorch loop; returns timings and losses."""
    t_start = time.perf_counter()
    import torch
    import torch.nn.functional as F

    from stablelab.models import ResNet1D
    from stablelab.optim import Adam

    c = DEFAULT
    dev, amp = _device()
    arrays = mnist1d_arrays(Path(os.environ.get("STABLELAB_DATA_DIR", "data")))
    data = {
        k: (torch.from_numpy(x)[:, None, :].to(dev), torch.from_numpy(y).to(dev))
        for k, (x, y) in arrays.items()
    }
    torch.manual_seed(seed)
    spec = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}
    residual = {"layout": "branch_norm", "branch_init": "default"}  # configs/model/resnet.yaml
    model = ResNet1D(spec, 10, depths=(1, 1, 1), residual=residual).to(dev)
    opt = Adam(model.parameters(), lr=c["lr"])
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def evaluate(split: str, limit: int | None = None) -> tuple[float, float]:
        model.eval()
        x, y = data[split]
        x, y = x[:limit], y[:limit]
        loss = torch.zeros((), dtype=torch.float64, device=dev)
        correct = 0
        for i in range(0, len(y), c["eval_batch"]):
            with amp():
                logits = model(x[i : i + c["eval_batch"]]).float()
            loss += F.cross_entropy(logits, y[i : i + c["eval_batch"]], reduction="sum")
            correct += int((logits.argmax(-1) == y[i : i + c["eval_batch"]]).sum())
        model.train()
        return loss.item() / len(y), correct / len(y)

    xt, yt = data["train"]
    t_train = time.perf_counter()
    evaluate("val", c["eval_batch"])  # the sanity batch
    best, ckpt, step = float("inf"), out / "best.pt", 0
    while step < steps:
        order = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), c["batch"]):
            idx = order[i : i + c["batch"]].to(dev)
            with amp():
                loss = F.cross_entropy(model(xt[idx]).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step <= c["dense_until"]:
                evaluate("val")
            if step % c["val_every"] == 0:
                val, _ = evaluate("val")
                if val < best:
                    best = val
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
            if step == steps:
                break
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    test, acc = evaluate("test")
    return {
        "train_seconds": time.perf_counter() - t_train,
        "inner_seconds": time.perf_counter() - t_start,
        "val_loss": best,
        "test_loss": test,
        "test_acc": acc,
        "heldout_loss": test,
    }


def bare_lm(steps: int, seed: int, out: Path, nanogpt: bool = False) -> dict:
    """The experiment as a plain PyTorch loop; returns timings and losses.

    ``nanogpt``: nanoGPT's own update instead of stablelab's (``torch.optim.AdamW``, weight
    decay on the 2-D weights only, and its learning rate: lr (it + 1) / (warmup + 1) during
    warmup, then cosine from lr to lr / 10 over the remaining steps), to tell the recipe's
    result from the template's."""
    t_start = time.perf_counter()
    from importlib.resources import files

    import torch
    import torch.nn.functional as F

    from stablelab.models import GPT
    from stablelab.optim import Adam
    from stablelab.optim.schedules import Cosine

    c = LM
    text = (files("stablelab.data") / "corpora" / "tinyshakespeare.txt").read_text("utf-8")
    n = int(len(text) * 0.9)
    held = text[n:]
    parts = {"train": text[:n], "val": held[: len(held) // 2], "test": held[len(held) // 2 :]}
    vocab = sorted(set(parts["train"]))
    index = {ch: i for i, ch in enumerate(vocab)}
    tok = {k: torch.tensor([index[ch] for ch in v], dtype=torch.long) for k, v in parts.items()}
    block = c["block"]
    offsets = torch.arange(block + 1)

    def windows(t: torch.Tensor) -> torch.Tensor:  # every non-overlapping window, stride 64
        return t[(torch.arange((len(t) - 1) // block) * block)[:, None] + offsets]

    dev, amp = _device()
    evals = {k: windows(tok[k]).to(dev) for k in ("val", "test")}
    train_tokens = tok["train"].to(dev)

    torch.manual_seed(seed)
    spec = {"kind": "tokens", "length": block, "channels": 1, "vocab_size": len(vocab),
            "task": "next_token"}  # fmt: skip
    model = GPT(spec, len(vocab), n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"])
    model = model.to(dev)
    if nanogpt:
        params = list(model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": c["weight_decay"]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=c["lr"], betas=(0.9, c["beta2"]), foreach=True)

        def schedule(it: int) -> float:  # nanoGPT's get_lr(it) / learning_rate
            w, f = c["warmup"], c["final"]
            if it < w:
                return (it + 1) / (w + 1)
            ratio = (it - w) / (steps - w)
            return f + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1 - f)
    else:
        opt = Adam(model.parameters(), lr=c["lr"], beta2=c["beta2"], weight_decay=c["weight_decay"])
        schedule = Cosine(steps, warmup_steps=c["warmup"], final_lr_fraction=c["final"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def evaluate(w: torch.Tensor) -> float:
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=dev)
        for i in range(0, len(w), c["eval_batch"]):
            x, y = w[i : i + c["eval_batch"], :-1], w[i : i + c["eval_batch"], 1:]
            with amp():
                logits = model(x).float()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
        model.train()
        return total.item() / (len(w) * block)

    t_train = time.perf_counter()
    evaluate(evals["val"][: c["eval_batch"]])  # the sanity batch
    best, ckpt = float("inf"), out / "best.pt"
    for step in range(1, steps + 1):
        starts = torch.randint(len(tok["train"]) - block, (c["batch"],), generator=gen)
        w = train_tokens[(starts[:, None] + offsets).to(dev)]
        with amp():
            logits = model(w[:, :-1]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip"])
        opt.step()
        sched.step()
        if step <= c["dense_until"]:
            evaluate(evals["val"][: c["dense_subset"]])
        if step % c["val_every"] == 0:
            val = evaluate(evals["val"])
            if val < best:
                best = val
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    test = evaluate(evals["test"])
    t_end_train = time.perf_counter()
    nv, nt = (len(evals[k]) * block for k in ("val", "test"))
    return {
        "train_seconds": t_end_train - t_train,
        "inner_seconds": time.perf_counter() - t_start,
        "val_loss": best,
        "test_loss": test,
        "heldout_loss": (best * nv + test * nt) / (nv + nt),
    }


def run_stablelab(workload: dict, steps: int, out: Path, env: dict) -> dict:
    gpu = ["trainer=gpu"] if env.get("STABLELAB_BENCH_DEVICE", "cpu") == "cuda" else []
    cmd = [
        sys.executable, "-m", "stablelab.train", f"experiment={workload['experiment']}",
        *gpu, f"max_train_steps={steps}", f"hydra.run.dir={out}",
    ]  # fmt: skip
    proc, wall, cpu = timed(cmd, env)
    s = json.loads((out / "summary.json").read_text())
    return {
        "process": wall,
        "cpu": cpu,
        "train": s["wall_seconds"],
        "heldout_loss": s.get("heldout_loss", s.get("test_loss")),
    }


def run_bare(name: str, steps: int, out: Path, env: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--bare", name, "--steps", str(steps), "--out", str(out)]
    proc, wall, cpu = timed(cmd, env)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "process": wall,
        "cpu": cpu,
        "train": r["train_seconds"],
        "heldout_loss": r["heldout_loss"],
    }


def timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd`` to completion: (the process, its wall seconds, its CPU seconds); a failed
    run raises with the end of its standard error."""
    t0, c0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc, wall, cpu


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: on a shared machine less
    noisy than wall time (another tenant's load slows the clock, not the work)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


WORKLOADS = {"default": (DEFAULT, bare_default), "lm": (LM, bare_lm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=list(WORKLOADS), default="default")
    ap.add_argument("--steps", type=int, default=None, help="default: the experiment's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: both on the GPU in bf16 autocast (trainer=gpu)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--reference",
        choices=["nanogpt", "playbook"],
        help="lm: no timing; train the loop for --repeats seeds from --seed and print the "
        "held-out losses, with nanoGPT's AdamW and schedule or with the experiment's update "
        "(the playbook's Adam and stablelab's schedule)",
    )
    ap.add_argument("--bare", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare:  # the child process: the loop itself
        print(json.dumps(WORKLOADS[args.bare][1](args.steps, args.seed, args.out)))
        return
    if args.reference:
        args.steps = args.steps or 2000
        with tempfile.TemporaryDirectory() as tmp:
            for seed in range(args.seed, args.seed + args.repeats):
                r = bare_lm(args.steps, seed, Path(tmp), nanogpt=args.reference == "nanogpt")
                print(f"seed {seed}: val {r['val_loss']:.4f}  test {r['test_loss']:.4f}  "
                      f"held-out {r['heldout_loss']:.4f}", flush=True)  # fmt: skip
        return
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["STABLELAB_BENCH_DEVICE"] = args.device
    workload = WORKLOADS[args.workload][0]
    args.steps = args.steps or workload.get("default_steps", 2000)
    if args.steps < workload["val_every"] or args.steps % workload["val_every"]:
        ap.error(f"--steps: a multiple of {workload['val_every']} (the validation interval)")
    runs: dict[str, list[dict]] = {"stablelab": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            order = ("bare", "stablelab") if i % 2 == 0 else ("stablelab", "bare")
            for who in order:
                out = Path(tmp, f"{who}{i}")
                r = (
                    run_bare(args.workload, args.steps, out, env)
                    if who == "bare"
                    else run_stablelab(workload, args.steps, out, env)
                )
                runs[who].append(r)
                print(f"  {who:9s} #{i}: process {r['process']:.1f} s (CPU {r['cpu']:.1f} s), fit "
                      f"{r['train']:.1f} s, held-out loss {r['heldout_loss']:.4f}",
                      file=sys.stderr, flush=True)  # fmt: skip
    med = {w: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for w, rs in runs.items()}
    unit, per_step = (
        ("training tokens/s", workload["batch"] * workload["block"])
        if "block" in workload
        else ("training examples/s", workload["batch"])
    )
    print(f"\n{args.workload} on {args.device}: {args.steps} steps, medians of {args.repeats} "
          "runs each\n")  # fmt: skip
    print("| | bare loop | stablelab-train | ratio |")
    print("|---|---|---|---|")
    for key, label in (
        ("process", "whole process (s)"),
        ("cpu", "whole process, CPU time (s)"),
        ("train", "fit + test (s)"),
    ):
        b, s = med["bare"][key], med["stablelab"][key]
        print(f"| {label} | {b:.1f} | {s:.1f} | {s / b:.2f}x |")
    b, s = (args.steps * per_step / med[w]["train"] for w in ("bare", "stablelab"))
    print(f"| {unit} | {b:,.0f} | {s:,.0f} | {b / s:.2f}x |")
    pairs = sorted(
        sl["train"] / ba["train"] for ba, sl in zip(runs["bare"], runs["stablelab"], strict=True)
    )
    print(f"| fit + test, ratio within each adjacent pair (min / median / max) | | | "
          f"{pairs[0]:.2f} / {statistics.median(pairs):.2f} / {pairs[-1]:.2f} |")  # fmt: skip
    b, s = med["bare"]["heldout_loss"], med["stablelab"]["heldout_loss"]
    what = "held-out loss" if "block" in workload else "test loss (best checkpoint)"
    print(f"| {what} | {b:.4f} | {s:.4f} | |")


if __name__ == "__main__":
    main()
