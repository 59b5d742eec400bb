"""Character-level language modelling on a text file (default: Tiny Shakespeare).

The split is nanoGPT's: the first ``train_fraction`` (90%) of the characters train, the
rest is held out, so held-out losses compare with nanoGPT's published numbers. The
held-out text is split in two halves: **validation** (model selection, dense evaluation,
the stability report) is the first half, **test** the second; ``summary.json``'s
``heldout_loss`` is the loss over both halves together, nanoGPT's "val loss".

* Vocabulary: the sorted distinct characters of the training part (a held-out character
  that never occurs in training maps to an extra token, U+FFFD). It is part of the
  module's hyperparameters (``input_spec["vocab"]``), so every checkpoint carries it and
  sampling and evaluation use the run's own vocabulary.
* Training batches: random windows of ``block_size + 1`` characters, in an order that is a
  pure function of ``(seed, step)`` (:class:`~stablelab.data.loader.RandomWindowLoader`;
  resumes and DDP see the batches of one uninterrupted process).
* Evaluation: every non-overlapping window of ``block_size + 1`` characters of the split
  (stride ``block_size``), the same windows every time; the loss is the mean over every
  predicted character (nats per character).
"""

from __future__ import annotations

import hashlib
import io
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stablelab.constraints import ConfigError, OpenUnit, PosInt
from stablelab.data.datamodules import InMemoryDataModule
from stablelab.data.loader import RandomWindowLoader

TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
UNKNOWN = "\ufffd"


def tiny_shakespeare() -> str:
    """The shipped corpus, checked against its published checksum."""
    raw = (resources.files("stablelab.data") / "corpora" / "tinyshakespeare.txt").read_bytes()
    if hashlib.sha256(raw).hexdigest() != TINY_SHAKESPEARE_SHA256:
        raise RuntimeError("the shipped tinyshakespeare.txt is damaged (sha256 mismatch)")
    return raw.decode("ascii")


def unigram_entropy(text: str) -> float:
    """Entropy (nats / character) of the character frequencies of ``text``: the loss of a
    model that ignores its context (3.31 on Tiny Shakespeare's training part), the level a
    language model that stopped learning sits at."""
    import math
    from collections import Counter

    n = len(text)
    return -sum(c / n * math.log(c / n) for c in Counter(text).values())


def encode(text: str, vocab: str) -> np.ndarray:
    """Token ids of ``text`` (characters outside ``vocab`` -> its U+FFFD token, which must
    then be in it)."""
    codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
    table = np.array([ord(c) for c in vocab], dtype=np.int64)  # sorted: vocab is
    ids = np.minimum(np.searchsorted(table, codes), len(table) - 1)
    unknown = table[ids] != codes
    if unknown.any():
        ids[unknown] = vocab.index(UNKNOWN)
    return ids


def decode(ids, vocab: str) -> str:
    return "".join(vocab[int(i)] for i in ids)


def eval_windows(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every non-overlapping window of ``block_size + 1`` tokens (stride ``block_size``):
    inputs and next-token targets, each (windows, block_size)."""
    n = (len(tokens) - 1) // block_size
    starts = np.arange(n) * block_size
    w = tokens[starts[:, None] + np.arange(block_size + 1)]
    return w[:, :-1], w[:, 1:]


def shortest_text(block_size: int, train_fraction: float) -> int:
    """The fewest characters a text needs for its train part (the first ``train_fraction``)
    and both halves of the held-out rest to hold one window of ``block_size + 1``."""
    w = block_size + 1
    n = max(2 * w, math.floor(w / train_fraction))  # a lower bound; step up to the first fit
    while True:
        held = n - int(n * train_fraction)
        if int(n * train_fraction) >= w and held // 2 >= w:  # (the test half >= the val half)
            return n
        n += 1


class CharTextDataModule(InMemoryDataModule):
    """Next-character prediction on ``path`` (UTF-8; null: the shipped Tiny Shakespeare)."""

    task = "next_token"

    def __init__(
        self,
        path: str | None = None,
        block_size: PosInt = 64,
        batch_size: PosInt = 12,
        eval_batch_size: PosInt = 128,
        train_fraction: OpenUnit = 0.9,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, shuffle_seed)
        self.path = path
        self.block_size = block_size
        self.train_fraction = train_fraction
        text = self._read()
        n_train = int(len(text) * train_fraction)  # nanoGPT: data[:int(n * 0.9)]
        self.texts = {"train": text[:n_train]}
        held = text[n_train:]
        self.texts["val"], self.texts["test"] = held[: len(held) // 2], held[len(held) // 2 :]
        if not text:
            raise ConfigError([f"data.path = {self.path!r}: the file is empty"])
        short = {k: len(v) for k, v in self.texts.items() if len(v) < block_size + 1}
        if short:
            need = shortest_text(block_size, train_fraction)
            raise ConfigError(
                [
                    f"data.block_size = {block_size}: the {k} part of {self._name()} has "
                    f"only {n} character{'' if n == 1 else 's'}; a window needs block_size + 1 "
                    f"= {block_size + 1} (use a smaller block_size, or a text of at least "
                    f"{need:,} characters: this one has {len(text):,})"
                    for k, n in short.items()
                ]
            )
        chars = sorted(set(self.texts["train"]))
        if len(chars) == 1:  # every next character is certain: loss 0 teaches nothing
            raise ConfigError(
                [
                    f"data.path = {self.path!r}: the training part (the first "
                    f"{train_fraction * 100:g}% of the text) is one character repeated "
                    f"({chars[0]!r} x {n_train:,}); next-character prediction needs at "
                    "least 2 distinct characters"
                ]
            )
        if set(held) - set(chars):
            chars = sorted({*chars, UNKNOWN})
        self.vocab = "".join(chars)
        self.num_classes = len(self.vocab)
        self.input_spec = {
            "kind": "tokens",
            "length": block_size,
            "channels": 1,
            "vocab_size": len(self.vocab),
            "task": self.task,
            "vocab": self.vocab,
        }
        self._tokens: dict[str, np.ndarray] | None = None

    def _name(self) -> str:
        return "Tiny Shakespeare" if self.path is None else repr(self.path)

    def _read(self) -> str:
        if self.path is None:
            return tiny_shakespeare()
        p = Path(self.path).expanduser()
        if p.exists() and not p.is_dir() and not p.is_file():
            # a device, FIFO or socket: read_bytes would wait forever (/dev/zero, a pipe)
            raise ConfigError(
                [f"data.path = {self.path!r}: not a regular file (a device, pipe or socket)"]
            )
        try:
            raw = p.read_bytes()
            self.source_sha256 = hashlib.sha256(raw).hexdigest()
            # as Path.read_text decodes (universal newlines: \r\n and \r read as \n)
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
        except FileNotFoundError:
            raise ConfigError([f"data.path = {self.path!r}: no such file"]) from None
        except IsADirectoryError:
            raise ConfigError([f"data.path = {self.path!r}: a directory, not a file"]) from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                [f"data.path = {self.path!r}: not UTF-8 text ({e.reason} at byte {e.start})"]
            ) from None

    def tokens(self) -> dict[str, np.ndarray]:
        if self._tokens is None:
            self._tokens = {k: encode(v, self.vocab) for k, v in self.texts.items()}
        return self._tokens

    # Lightning hooks / InMemoryDataModule ------------------------------------------
    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str | None = None) -> None:
        if self._tensors is not None:
            return
        tok = self.tokens()
        self._tensors = {"train": (torch.as_tensor(tok["train"]), torch.empty(0))}
        for split in ("val", "test"):
            x, y = eval_windows(tok[split], self.block_size)
            self._tensors[split] = (torch.as_tensor(x), torch.as_tensor(y))

    def train_dataloader(self) -> RandomWindowLoader:
        self.setup()
        assert self._tensors is not None
        rank, world = self._rank_world()
        loader = RandomWindowLoader(
            self._tensors["train"][0],
            self.block_size,
            self.batch_size,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world,
        )
        loader.batch_offset = self.batch_offset
        return loader

    def split_sizes(self) -> dict[str, int]:
        """Windows per split (training: the distinct window starts)."""
        self.setup()
        assert self._tensors is not None
        return {
            "train": int(self._tensors["train"][0].numel()) - self.block_size,
            "val": int(self._tensors["val"][0].shape[0]),
            "test": int(self._tensors["test"][0].shape[0]),
        }

    def split_tokens(self) -> dict[str, int]:
        """Predicted characters per evaluation split (what the losses average over)."""
        return {k: v * self.block_size for k, v in self.split_sizes().items() if k != "train"}

    def summary(self) -> dict[str, Any]:
        """``summary.json`` keys: the vocabulary size and the characters of each part."""
        chars = {k: len(v) for k, v in self.texts.items()}
        return {"vocab_size": len(self.vocab), "characters": chars}
