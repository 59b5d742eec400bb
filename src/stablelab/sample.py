"""``stablelab sample RUN_DIR``: text from a language model's checkpoint.

Autoregressive sampling from the run's best checkpoint (``summary.json``'s
``best_checkpoint``, else ``checkpoints/last.ckpt``; or ``--checkpoint PATH``), with the
run's own character vocabulary (stored in the checkpoint). The checkpoint is loaded through
:meth:`StableModule.load_from_checkpoint` (plain data only, targets checked). With a seed
the text is the same every time on the same machine; ``--temperature 0`` is greedy. The
command prints each character as it is sampled (:func:`stream`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from stablelab.data.text import decode, encode


def checkpoint_of(run_dir: Path) -> Path:
    """The run's best checkpoint, else its last one (a checkpoint file given as the run
    directory: that file)."""
    from stablelab.analysis.runs import best_checkpoint

    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory or checkpoint")
    found = best_checkpoint(run_dir)
    if found is not None:
        return found
    raise FileNotFoundError(f"no checkpoint in {run_dir} (no best_checkpoint, no last.ckpt)")


def generate(
    module,
    prompt: str = "\n",
    chars: int = 500,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 1337,
) -> str:
    """``chars`` characters after ``prompt`` (the prompt itself not included)."""
    return "".join(stream(module, prompt, chars, temperature, top_k, seed))


def stream(
    module,
    prompt: str = "\n",
    chars: int = 500,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int = 1337,
) -> Iterator[str]:
    """:func:`generate`'s characters one at a time, as they are sampled (the arguments are
    checked before the first one)."""
    import math

    if chars < 0:
        raise ValueError(f"chars = {chars}: must be >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature = {temperature}: must be >= 0 (0: greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k = {top_k}: must be >= 1 (or None: every character)")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one character (default: a newline)")
    spec = module.hparams["input_spec"]
    vocab, block = spec.get("vocab"), int(spec["length"])
    if spec.get("task") != "next_token":
        raise ValueError("not a language model's checkpoint (a classifier: nothing to sample)")
    if not vocab:
        raise ValueError(
            "a language model without a character vocabulary (its data's input_spec has no "
            "'vocab': sampling prints characters, as data=shakespeare_char / text_file give "
            "them; a token model of your own decodes its samples itself)"
        )
    missing = sorted(set(prompt) - set(vocab))
    if missing:
        raise ValueError(f"the prompt has characters outside the run's vocabulary: {missing}")
    return _sampled(module, encode(prompt, vocab), vocab, block, chars, temperature, top_k, seed)


def _sampled(module, ids0, vocab, block, chars, temperature, top_k, seed) -> Iterator[str]:
    module.eval()
    ids = torch.as_tensor(ids0, dtype=torch.long, device=module.device)
    gen = torch.Generator(device=module.device).manual_seed(seed)
    for _ in range(chars):
        with torch.no_grad():
            logits = module(ids[-block:][None])[0, -1].float()
            if temperature <= 0:
                nxt = logits.argmax()[None]
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        ids = torch.cat([ids, nxt])
        yield decode([int(nxt)], vocab)
