"""LightningDataModules for datasets generated or shipped offline.

Each module builds numpy arrays once (generated data is cached on disk as ``.npz`` keyed by
its generation arguments), holds them as tensors, and serves them with
:class:`~stablelab.data.loader.InMemoryLoader`. ``input_spec`` and ``num_classes`` tell the
model builder what the inputs look like.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from stablelab.constraints import OpenUnit, PosInt, raise_problems
from stablelab.data.loader import InMemoryLoader, StatefulLoader


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n): (kept indices, carved-out indices)."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(data_dir: str, name: str, args: dict[str, Any], make) -> dict[str, np.ndarray]:
    """Load ``make()``'s arrays from ``data_dir`` or build and save them atomically.

    The file name holds a hash of the generation arguments; beside it, ``<file>.sha256``
    holds the file's own checksum. A cache file that is truncated, corrupt, edited or left
    without its checksum (a crash between the two writes) is not used: a warning names it
    and the data are generated again. Loading never unpickles (``allow_pickle=False``).
    """
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data_dir).expanduser() / f"{name}-{key}.npz"
    check = path.with_name(path.name + ".sha256")
    if path.is_file():
        why = None
        try:
            if not check.is_file():
                why = "no checksum beside it"
            elif check.read_text().split()[0] != _sha256(path):
                why = "its checksum does not match (truncated or changed)"
            else:
                with np.load(path, allow_pickle=False) as f:
                    return {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - unreadable: regenerate
            why = f"{type(e).__name__}: {e}"
        warnings.warn(f"data cache {path} is not usable ({why}): generating it again", stacklevel=2)
    arrays = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    tmp_check = check.with_name(check.name + f".{os.getpid()}.tmp")
    tmp_check.write_text(f"{digest}  {path.name}\n")
    os.replace(tmp_check, check)
    return arrays


class InMemoryDataModule(L.LightningDataModule):
    """Base class: subclasses implement :meth:`_arrays` returning train/val/test splits."""

    input_spec: dict[str, Any]
    num_classes: int
    # the training order is a pure function of (seed, step), restored mid-epoch from a
    # checkpoint (stablelab.contract: a resumed run sees the batches an uninterrupted one would)
    exact_resume = True
    # training batches the data order runs ahead of the steps (set by a rollback: the
    # batches around a divergence are skipped; see StableModule.rollback)
    batch_offset = 0
    # sha256 of the file the data was read from (a user's data.path), None for data
    # generated from the config: checkpoints record it, so a resume or an evaluation can
    # tell when the file changed since training
    source_sha256: str | None = None

    def __init__(self, batch_size: int, eval_batch_size: int, shuffle_seed: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle_seed = shuffle_seed
        self._tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # subclasses --------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        """Keys x_train, y_train, x_val, y_val, x_test, y_test."""
        raise NotImplementedError

    def _x_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.float32)

    # Lightning hooks ---------------------------------------------------------------
    def prepare_data(self) -> None:
        self._arrays()  # generate and cache once (local rank 0 under DDP)

    def setup(self, stage: str | None = None) -> None:
        if self._tensors is not None:
            return
        a = self._arrays()
        self._tensors = {
            split: (self._x_tensor(a[f"x_{split}"]), torch.as_tensor(a[f"y_{split}"]).long())
            for split in ("train", "val", "test")
        }

    def _rank_world(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, split: str, train: bool) -> InMemoryLoader:
        self.setup()
        assert self._tensors is not None
        rank, world = self._rank_world()
        return InMemoryLoader(
            *self._tensors[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.shuffle_seed,
            rank=rank,
            world_size=world,
        )

    def train_dataloader(self) -> StatefulLoader:
        loader = self._loader("train", train=True)
        loader.batch_offset = self.batch_offset
        return loader

    def val_dataloader(self) -> InMemoryLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> InMemoryLoader:
        return self._loader("test", train=False)

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        assert self._tensors is not None
        return {k: int(v[0].shape[0]) for k, v in self._tensors.items()}


class MNIST1DDataModule(InMemoryDataModule):
    """MNIST-1D (Greydanus 2020), generated offline by ``mnist1d.data.make_dataset``.

    The generator's own train/test split (4000/1000 with ``num_samples=5000``) is kept; a
    seeded validation split of ``val_fraction`` is carved out of the training part.
    Inputs: real-valued sequences of length 40, one channel.
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PosInt = 128,
        eval_batch_size: PosInt = 1000,
        val_fraction: OpenUnit = 0.1,
        num_samples: PosInt = 5000,
        generator_seed: int = 42,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, shuffle_seed)
        self.data_dir = data_dir
        self.val_fraction = val_fraction
        self.num_samples = num_samples
        self.generator_seed = generator_seed
        self.split_seed = split_seed
        self.input_spec = {"kind": "real", "length": 40, "channels": 1, "vocab_size": 0}

    def _generate(self) -> dict[str, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = self.num_samples
        args.seed = self.generator_seed
        d = make_dataset(args)  # procedural generation: no download
        return {
            "x": d["x"].astype(np.float32),
            "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32),
            "y_test": d["y_test"].astype(np.int64),
        }

    def _arrays(self) -> dict[str, np.ndarray]:
        raw = _cached(
            self.data_dir,
            "mnist1d",
            {"num_samples": self.num_samples, "seed": self.generator_seed},
            self._generate,
        )
        keep, val = _split(len(raw["y"]), self.val_fraction, self.split_seed)
        return {
            "x_train": raw["x"][keep],
            "y_train": raw["y"][keep],
            "x_val": raw["x"][val],
            "y_val": raw["y"][val],
            "x_test": raw["x_test"],
            "y_test": raw["y_test"],
        }


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package).

    Pixels are scaled to [0, 1] and flattened into a length-64 sequence with one channel.
    Seeded splits: ``test_fraction`` of all images for test, ``val_fraction`` of the rest
    for validation.
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: PosInt = 64,
        eval_batch_size: PosInt = 1000,
        val_fraction: OpenUnit = 0.1,
        test_fraction: OpenUnit = 0.2,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, shuffle_seed)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.input_spec = {"kind": "real", "length": 64, "channels": 1, "vocab_size": 0}

    def _arrays(self) -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)
        y = d.target.astype(np.int64)
        rest, test = _split(len(y), self.test_fraction, self.split_seed)
        keep_i, val_i = _split(len(rest), self.val_fraction, self.split_seed + 1)
        train, val = rest[keep_i], rest[val_i]
        return {
            "x_train": x[train],
            "y_train": y[train],
            "x_val": x[val],
            "y_val": y[val],
            "x_test": x[test],
            "y_test": y[test],
        }


class SequenceDataModule(InMemoryDataModule):
    """Key-value recall, a generated sequence task suited to a Transformer.

    Each example is ``num_pairs`` pair tokens followed by one query token. Pair token i
    encodes a key k_i (distinct within an example, from ``num_keys``) and a value v_i (from
    ``num_values``) as ``k_i * num_values + v_i``; the query token is
    ``num_keys * num_values + k_q`` for one of the example's keys k_q. The label is the
    value v_q paired with the queried key. Solving it takes content-based lookup across
    the sequence, which one attention layer does directly; an MLP on the flattened
    sequence must learn every position-key combination separately.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PosInt = 128,
        eval_batch_size: PosInt = 1000,
        num_train: PosInt = 8000,
        num_val: PosInt = 1000,
        num_test: PosInt = 1000,
        num_pairs: PosInt = 8,
        num_keys: PosInt = 16,
        num_values: PosInt = 8,
        generator_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, shuffle_seed)
        raise_problems(self.config_problems(locals()), "data")
        self.data_dir = data_dir
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.num_pairs = num_pairs
        self.num_keys = num_keys
        self.num_values = num_values
        self.generator_seed = generator_seed
        self.num_classes = num_values
        self.input_spec = {
            "kind": "tokens",
            "length": num_pairs + 1,
            "channels": 1,
            "vocab_size": num_keys * num_values + num_keys,
        }

    @staticmethod
    def config_problems(c: dict[str, Any]) -> list[str]:
        if c["num_pairs"] > c["num_keys"]:  # keys are distinct within an example
            return [f"num_pairs = {c['num_pairs']}: must be <= num_keys = {c['num_keys']}"]
        return []

    @staticmethod
    def generate(
        n: int, num_pairs: int, num_keys: int, num_values: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        keys = np.argsort(rng.random((n, num_keys)), axis=1)[:, :num_pairs]  # distinct
        values = rng.integers(0, num_values, size=(n, num_pairs))
        q = rng.integers(0, num_pairs, size=n)
        x = np.empty((n, num_pairs + 1), dtype=np.int64)
        x[:, :num_pairs] = keys * num_values + values
        x[:, num_pairs] = num_keys * num_values + keys[np.arange(n), q]
        y = values[np.arange(n), q].astype(np.int64)
        return x, y

    def _arrays(self) -> dict[str, np.ndarray]:
        args = {
            "sizes": self.sizes,
            "pairs": self.num_pairs,
            "keys": self.num_keys,
            "values": self.num_values,
            "seed": self.generator_seed,
        }

        def make() -> dict[str, np.ndarray]:
            rng = np.random.default_rng(self.generator_seed)
            out = {}
            for split, n in self.sizes.items():
                out[f"x_{split}"], out[f"y_{split}"] = self.generate(
                    n, self.num_pairs, self.num_keys, self.num_values, rng
                )
            return out

        return _cached(self.data_dir, "recall-v2", args, make)

    def _x_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x, dtype=torch.long)


NPZ_SPLITS = ("train", "val", "test")


class NpzDataModule(InMemoryDataModule):
    """Your own arrays, no code: classification from a NumPy ``.npz`` file (``data=npz
    data.path=...``).

    The file holds ``x`` and ``y`` (seeded splits: ``test_fraction`` of all examples for
    test, ``val_fraction`` of the rest for validation), or ``x_train``, ``y_train``,
    ``x_test``, ``y_test`` (validation carved from train), or all six of ``x_/y_`` train,
    val and test (used as they are). ``x``: floats of shape (N, length) or (N, channels,
    length), or integer token ids of shape (N, length) (the vocabulary: the largest id + 1);
    ``y``: integer class labels 0 .. num_classes - 1 (``num_classes``: null takes the largest
    label + 1). Read once, without pickle, when the run is built: a problem with the file is
    refused before anything trains, naming ``data.path``.
    """

    def __init__(
        self,
        path: str,
        batch_size: PosInt = 128,
        eval_batch_size: PosInt = 1000,
        val_fraction: OpenUnit = 0.1,
        test_fraction: OpenUnit = 0.1,
        num_classes: PosInt | None = None,
        split_seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, shuffle_seed)
        self.path = path
        self.val_fraction, self.test_fraction, self.split_seed = (
            val_fraction,
            test_fraction,
            split_seed,
        )
        self._data = self._read(num_classes)
        x = self._data["x_train"]
        tokens = np.issubdtype(x.dtype, np.integer)
        self.input_spec = {
            "task": "classification",
            "kind": "tokens" if tokens else "real",
            "length": int(x.shape[-1]),
            "channels": int(x.shape[1]) if x.ndim == 3 else 1,
            "vocab_size": int(max(int(a.max()) for k, a in self._data.items() if k[0] == "x") + 1)
            if tokens
            else 0,
        }

    def _read(self, num_classes: int | None) -> dict[str, np.ndarray]:
        """The six arrays (x_/y_ train, val, test) of the file, checked; sets num_classes."""
        from stablelab.constraints import ConfigError

        where = f"data.path = {self.path!r}"
        raw = self._load(where)
        # the file's own arrays first (x, y or x_train, ...), as the user named them
        problems = [p for name in sorted(raw) for p in _array_problems(raw[name], name, where)]
        if problems:
            raise ConfigError(problems)
        data = self._splits(raw, where)
        problems = [p for s in NPZ_SPLITS for p in _split_problems(data, s, where)]
        if problems:
            raise ConfigError(problems)
        shapes = {x.shape[1:] for k, x in data.items() if k[0] == "x"}
        if len(shapes) > 1:
            raise ConfigError([f"{where}: the splits' x differ in shape: {sorted(shapes)}"])
        labels = np.concatenate([data[f"y_{s}"] for s in NPZ_SPLITS])
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ConfigError([f"{where}: negative class labels (smallest {lo})"])
        if num_classes is not None and hi >= num_classes:
            raise ConfigError(
                [f"data.num_classes = {num_classes}: the labels go up to {hi}; use >= {hi + 1}"]
            )
        if len(np.unique(labels)) < 2:
            raise ConfigError(
                [
                    f"{where}: every example has the label {lo}; a classifier needs two "
                    "classes or more"
                ]
            )
        self.num_classes = num_classes if num_classes is not None else hi + 1
        return data

    def _load(self, where: str) -> dict[str, np.ndarray]:
        """Every array of the file (never a pickled object)."""
        from stablelab.constraints import ConfigError

        p = Path(self.path).expanduser()
        if not p.is_file():
            raise ConfigError([f"{where}: no such file (a .npz with arrays x and y)"])
        try:
            raw = p.read_bytes()
            self.source_sha256 = hashlib.sha256(raw).hexdigest()
            if not raw.startswith(b"PK"):  # (np.load would say "pickled data" of any text)
                kind = "a single .npy array" if raw.startswith(b"\x93NUMPY") else "not a zip"
                raise ConfigError(
                    [f"{where}: not a .npz file ({kind}; np.savez writes one, with arrays x and y)"]
                )
            with np.load(io.BytesIO(raw), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - not a readable npz, or object arrays
            raise ConfigError(
                [f"{where}: not a readable .npz without pickled objects ({e})"]
            ) from None

    def _splits(self, raw: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
        """The six arrays from whichever layout the file has: all six, train + test (val
        split off train), or x + y (test, then val split off)."""
        from stablelab.constraints import ConfigError

        six = [f"{a}_{s}" for s in NPZ_SPLITS for a in "xy"]
        if all(k in raw for k in six):
            return {k: raw[k] for k in six}
        if all(k in raw for k in ("x_train", "y_train", "x_test", "y_test")):
            keep, val = _split(len(raw["y_train"]), self.val_fraction, self.split_seed)
            return {
                "x_train": raw["x_train"][keep], "y_train": raw["y_train"][keep],
                "x_val": raw["x_train"][val], "y_val": raw["y_train"][val],
                "x_test": raw["x_test"], "y_test": raw["y_test"],
            }  # fmt: skip
        if "x" in raw and "y" in raw:
            if len(raw["x"]) != len(raw["y"]):
                raise ConfigError([f"{where}: x has {len(raw['x'])} examples, y {len(raw['y'])}"])
            rest, test = _split(len(raw["y"]), self.test_fraction, self.split_seed)
            keep_i, val_i = _split(len(rest), self.val_fraction, self.split_seed + 1)
            idx = {"train": rest[keep_i], "val": rest[val_i], "test": test}
            return {f"{a}_{s}": raw[a][i] for s, i in idx.items() for a in "xy"}
        raise ConfigError(
            [
                f"{where}: arrays {sorted(raw)}; expected x and y, or x_train, y_train, "
                "x_test, y_test, or x_/y_ train, val and test"
            ]
        )

    def _arrays(self) -> dict[str, np.ndarray]:
        return self._data

    def _x_tensor(self, x: np.ndarray) -> torch.Tensor:
        if np.issubdtype(x.dtype, np.integer):
            return torch.as_tensor(x, dtype=torch.long)
        return torch.as_tensor(x, dtype=torch.float32)


def _split_problems(data: dict[str, np.ndarray], s: str, where: str) -> list[str]:
    """What is wrong with one split of an npz once split: lengths, emptiness."""
    x, y = data[f"x_{s}"], data[f"y_{s}"]
    problems = []
    if len(x) != len(y):
        problems.append(f"{where}: x_{s} has {len(x)} examples, y_{s} {len(y)}")
    if len(y) == 0:
        problems.append(f"{where}: the {s} split is empty (adjust the split fractions)")
    return problems


def _array_problems(a: np.ndarray, name: str, where: str) -> list[str]:
    """What is wrong with one array of the file (``x``, ``y_train``, ...): labels one
    integer each; inputs floats or token ids of the right shape, finite, ids >= 0; the
    first bad example named."""
    if name.startswith("y"):
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            return [
                f"{where}: {name} has dtype {a.dtype} and shape {a.shape}; class labels are "
                "one integer per example"
            ]
        return []
    if not name.startswith("x"):
        return []  # (an array the layouts do not read: named by _splits if it matters)
    ints = np.issubdtype(a.dtype, np.integer)
    if not (ints or np.issubdtype(a.dtype, np.floating)):
        return [f"{where}: {name} has dtype {a.dtype}; floats or integer ids"]
    if a.ndim not in (2, 3) or (ints and a.ndim != 2):
        return [
            f"{where}: {name} has shape {a.shape}; (N, length) or (N, channels, length) "
            "for floats, (N, length) for token ids"
        ]
    rows = a.reshape(len(a), -1)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1) if not ints else (rows < 0).any(axis=1))
    if bad.size:
        what = "negative token ids" if ints else "NaN or infinite values"
        return [f"{where}: {name} holds {what} (example {bad[0]}; {bad.size} example(s) in all)"]
    return []
