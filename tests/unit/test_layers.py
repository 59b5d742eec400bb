"""Layers that import one way: the model and optimizer code needs torch alone."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = r"""
import sys
class Block:  # any import of Hydra, OmegaConf or Lightning fails
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("omegaconf", "hydra", "lightning", "lightning_fabric",
                                  "pytorch_lightning", "wandb"):
            raise ImportError(f"blocked: {name}")
        return None
sys.meta_path.insert(0, Block())
"""


def test_models_and_optim_import_and_work_with_torch_alone():
    code = (
        BLOCKER
        + r"""
import torch
import stablelab.models, stablelab.optim, stablelab.optim.clipping, stablelab.optim.schedules
import stablelab.constraints
m = stablelab.models.GPT({"task": "next_token", "kind": "tokens", "length": 8, "channels": 1,
                          "vocab_size": 11}, 11, n_layer=1, n_embd=16, n_head=2)
opt = stablelab.optim.Adam(m.parameters(), lr=1e-3)
sched = stablelab.optim.schedules.Cosine(max_train_steps=10, warmup_steps=2)
loss = m(torch.randint(0, 11, (2, 8))).logsumexp(-1).mean()
loss.backward()
stats = stablelab.optim.clipping.FixedNorm(clip_threshold=1.0)(list(m.named_parameters()))
opt.step()
heavy = sorted(k for k in sys.modules if k.split(".")[0] in ("hydra", "omegaconf"))
print("ok", sched(1), heavy)
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok 0.5 []"


def test_bad_values_in_models_raise_the_config_error_without_hydra():
    code = (
        BLOCKER
        + r"""
import stablelab.models
from stablelab.constraints import ConfigError
try:
    stablelab.models.ResNet1D({"kind": "real", "length": 40, "channels": 1, "vocab_size": 0},
                              10, widths=[8, 16], depths=[1], strides=[1, 2])
except ConfigError as e:
    print("refused:", e.problems[0].split(":")[0])
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("refused: model.")
