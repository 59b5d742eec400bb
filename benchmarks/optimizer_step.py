"""Step time of each playbook update rule against the nearest torch.optim rule (foreach).

    python benchmarks/optimizer_step.py [--params 10e6] [--repeats 50] [--device cpu]

Builds a ~10M-parameter MLP, fills every gradient once, then times ``optimizer.step()``
alone (median over ``--repeats`` steps after warm-up) for each pair and prints a table of
medians and ratios (ours / torch). Target: every ratio <= 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from stablelab.optim import SGD, Adam, Momentum, NAdam, Nesterov, RMSProp  # noqa: E402

PAIRS = {
    # name: (ours, nearest torch.optim rule with the same hyperparameters)
    "sgd": (lambda p: SGD(p, lr=1e-3), lambda p: torch.optim.SGD(p, lr=1e-3, foreach=True)),
    "momentum": (
        lambda p: Momentum(p, lr=1e-3, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True),
    ),
    "nesterov": (
        lambda p: Nesterov(p, lr=1e-3, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, nesterov=True, foreach=True),
    ),
    "rmsprop": (
        lambda p: RMSProp(p, lr=1e-3, rho=0.9, momentum=0.9),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, momentum=0.9, foreach=True),
    ),
    "adam": (lambda p: Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3, foreach=True)),
    "nadam": (lambda p: NAdam(p, lr=1e-3), lambda p: torch.optim.NAdam(p, lr=1e-3, foreach=True)),
}


def model(n_params: float, device: str) -> torch.nn.Module:
    width = 1024
    layers = max(1, round(n_params / (width * width + width)))
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)


def time_steps(make_opt, net, repeats: int, device: str) -> float:
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = make_opt(params)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(5):  # warm-up: state allocation, kernels
        opt.step()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=float, default=10e6)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rules", nargs="*", default=list(PAIRS))
    args = ap.parse_args()
    net = model(args.params, args.device)
    n = sum(p.numel() for p in net.parameters())
    print(
        f"{n / 1e6:.1f}M parameters on {args.device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} steps\n"
    )
    print("| rule | stablelab (ms) | torch.optim (ms) | ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for name in args.rules:
        ours, theirs = PAIRS[name]
        # interleave to share any drift in machine load between the two
        a = [time_steps(ours, net, args.repeats, args.device) for _ in range(2)]
        b = [time_steps(theirs, net, args.repeats, args.device) for _ in range(2)]
        ta, tb = min(a), min(b)
        worst = max(worst, ta / tb)
        print(f"| {name} | {ta * 1e3:.2f} | {tb * 1e3:.2f} | {ta / tb:.2f}x |")
    print(f"\nworst ratio {worst:.2f}x (target <= 1.15x)")


if __name__ == "__main__":
    main()
