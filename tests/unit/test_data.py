"""The in-memory loader and the three datamodules, against independent computations."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from stablelab.data import DigitsDataModule, InMemoryLoader, MNIST1DDataModule, SequenceDataModule


def _ids(loader) -> list[list[int]]:
    return [b[0].tolist() for b in loader]


def test_loader_epoch_is_a_permutation():
    ids = torch.arange(103)
    batches = _ids(InMemoryLoader(ids, ids * 2, batch_size=10, shuffle=True, seed=3))
    assert len(batches) == 11 and sorted(sum(batches, [])) == list(range(103))
    dropped = _ids(InMemoryLoader(ids, batch_size=10, shuffle=True, drop_last=True, seed=3))
    assert len(dropped) == 10 and all(len(b) == 10 for b in dropped)
    assert len(set(sum(dropped, []))) == 100  # no example twice


def test_loader_labels_stay_with_inputs():
    x = torch.arange(50)
    for bx, by in InMemoryLoader(x, x * 7, batch_size=8, shuffle=True, seed=1):
        assert torch.equal(by, bx * 7)


def test_loader_order_is_a_function_of_seed_and_epoch():
    ids = torch.arange(64)
    a = InMemoryLoader(ids, batch_size=8, shuffle=True, seed=5)
    b = InMemoryLoader(ids, batch_size=8, shuffle=True, seed=5)
    first = _ids(a)
    assert first == _ids(b) == _ids(a)  # same seed, same epoch
    a.sampler.set_epoch(1)
    assert _ids(a) != first  # a new epoch reshuffles
    assert _ids(InMemoryLoader(ids, batch_size=8, shuffle=True, seed=6)) != first
    assert _ids(InMemoryLoader(ids, batch_size=8)) == [
        list(range(i, i + 8)) for i in range(0, 64, 8)
    ]


def test_loader_ranks_split_the_global_batch():
    ids = torch.arange(100)
    single = _ids(InMemoryLoader(ids, batch_size=16, shuffle=True, drop_last=True, seed=2))
    ranks = [
        _ids(
            InMemoryLoader(
                ids, batch_size=8, shuffle=True, drop_last=True, seed=2, rank=r, world_size=2
            )
        )
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 6
    for k, batch in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == batch


@pytest.mark.parametrize(("n", "world"), [(401, 2), (400, 3), (10, 4), (5, 4), (2, 3)])
def test_eval_loader_ranks_cover_the_split_once_in_near_equal_slices(n, world):
    """Evaluation (no drop_last): every rank runs the same number of batches (sharded
    models gather in every forward), together the ranks see every example once, in the
    one-process order, and the slices of a global batch differ in size by at most one."""
    ids = torch.arange(n)
    single = _ids(InMemoryLoader(ids, batch_size=3 * world))
    ranks = [
        _ids(InMemoryLoader(ids, batch_size=3, rank=r, world_size=world)) for r in range(world)
    ]
    assert {len(r) for r in ranks} == {len(single)} == {-(-n // (3 * world))}
    for k, batch in enumerate(single):
        slices = [r[k] for r in ranks]
        assert sum(slices, []) == batch
        sizes = [len(s) for s in slices]
        assert max(sizes) - min(sizes) <= 1 and sorted(sizes, reverse=True) == sizes


def test_loader_resumes_mid_epoch():
    ids = torch.arange(40)
    a = InMemoryLoader(ids, batch_size=4, shuffle=True, seed=9)
    a.sampler.set_epoch(2)
    it = iter(a)
    seen = [next(it)[0].tolist() for _ in range(3)]
    state = a.state_dict()
    rest = [b[0].tolist() for b in it]
    b = InMemoryLoader(ids, batch_size=4, shuffle=True, seed=9)
    b.load_state_dict(state)
    assert state == {"epoch": 2, "consumed": 3}
    assert _ids(b) == rest and len(seen) + len(rest) == len(a)
    assert len(_ids(b)) == len(a)  # the skip applies to one pass only


def test_mnist1d_matches_the_generator_and_is_cached(tmp_path, monkeypatch):
    from mnist1d.data import get_dataset_args, make_dataset

    dm = MNIST1DDataModule(data_dir=str(tmp_path), val_fraction=0.1)
    dm.setup()
    assert dm.split_sizes() == {"train": 3600, "val": 400, "test": 1000}
    ref = make_dataset(get_dataset_args())  # the generator's own 4000 / 1000 split
    x_test, y_test = dm._tensors["test"]
    np.testing.assert_array_equal(x_test.numpy(), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(y_test.numpy(), ref["y_test"])
    # train + val are exactly the generator's training examples (as a multiset of rows)
    tv = torch.cat([dm._tensors["train"][0], dm._tensors["val"][0]]).numpy()
    rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(rows(tv), rows(ref["x"].astype(np.float32)))
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 1

    # second use: served from the cache, the generator is not called
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", lambda *a, **k: pytest.fail("regenerated"))
    dm2 = MNIST1DDataModule(data_dir=str(tmp_path))
    dm2.setup()
    assert torch.equal(dm2._tensors["val"][0], dm._tensors["val"][0])  # same seeded split
    dm3 = MNIST1DDataModule(data_dir=str(tmp_path), split_seed=1)
    dm3.setup()
    assert not torch.equal(dm3._tensors["val"][0], dm._tensors["val"][0])


def test_digits_splits_cover_the_dataset():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(val_fraction=0.1, test_fraction=0.2)
    dm.setup()
    sizes = dm.split_sizes()
    assert sum(sizes.values()) == 1797 and sizes["test"] == round(1797 * 0.2)
    all_x = torch.cat([dm._tensors[s][0] for s in ("train", "val", "test")]).numpy()
    ref = load_digits().data / 16.0
    rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(rows(all_x), rows(ref.astype(np.float32)))
    assert all_x.min() >= 0 and all_x.max() <= 1


def test_sequence_labels_by_brute_force(tmp_path):
    dm = SequenceDataModule(
        data_dir=str(tmp_path),
        num_train=300,
        num_val=50,
        num_test=50,
        num_pairs=5,
        num_keys=9,
        num_values=4,
    )
    dm.setup()
    x, y = dm._tensors["train"]
    assert dm.input_spec == {"kind": "tokens", "length": 6, "channels": 1, "vocab_size": 45}
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        pairs, query = row[:-1], row[-1]
        keys = [t // 4 for t in pairs]
        assert len(set(keys)) == 5 and all(t < 36 for t in pairs)
        qk = query - 36
        matches = [t % 4 for t in pairs if t // 4 == qk]
        assert matches == [label]
    # labels are spread over all values
    assert set(y.tolist()) == {0, 1, 2, 3}


def _make_counter():
    calls = []

    def make():
        calls.append(1)
        return {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "y": np.arange(3)}

    return make, calls


@pytest.mark.parametrize("damage", ["truncate", "garbage", "edit", "no_checksum", "pickle"])
def test_a_damaged_data_cache_is_named_and_regenerated(tmp_path, damage):
    """A cache file that is truncated, not a zip, changed after it was written (its
    checksum no longer matches), left without its checksum, or holding a pickle is never
    used: a warning names the file and the data are generated again (and then used)."""
    from stablelab.data.datamodules import _cached, _sha256

    make, calls = _make_counter()
    first = _cached(str(tmp_path), "toy", {"a": 1}, make)
    (path,) = tmp_path.glob("toy-*.npz")
    check = path.with_name(path.name + ".sha256")
    assert check.is_file() and len(calls) == 1
    assert _cached(str(tmp_path), "toy", {"a": 1}, make)["x"].tolist() == first["x"].tolist()
    assert len(calls) == 1  # a sound cache is used
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all")
    elif damage == "edit":  # a valid npz with other numbers: the checksum catches it
        np.savez(path.with_suffix(""), x=np.zeros((3, 4), np.float32), y=np.arange(3))
    elif damage == "no_checksum":
        check.unlink()
    else:  # an object array needs pickle: even with a matching checksum it is not loaded
        np.savez(path.with_suffix(""), x=np.array([object()], dtype=object), y=np.arange(3))
        check.write_text(_sha256(path))
    with pytest.warns(UserWarning, match=f"data cache {path} is not usable"):
        again = _cached(str(tmp_path), "toy", {"a": 1}, make)
    assert len(calls) == 2 and again["x"].tolist() == first["x"].tolist()
    assert _cached(str(tmp_path), "toy", {"a": 1}, make)["x"].tolist() == first["x"].tolist()
    assert len(calls) == 2  # the regenerated cache is sound again


# ---------------------------------------------------------------------- character text
def test_tiny_shakespeare_split_is_nanogpts():
    """The shipped corpus (checked by its published sha256): nanoGPT's 90% / 10% split by
    characters, the held-out text halved into validation and test, 65 symbols."""
    import hashlib
    from importlib import resources

    from stablelab.data import CharTextDataModule
    from stablelab.data.text import decode

    raw = (resources.files("stablelab.data") / "corpora" / "tinyshakespeare.txt").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == (
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    )
    text = raw.decode()
    dm = CharTextDataModule(block_size=64)
    assert len(text) == 1_115_394 and len(dm.vocab) == 65 == dm.num_classes
    assert len(dm.texts["train"]) == 1_003_854  # int(0.9 * n), as nanoGPT
    assert dm.texts["val"] + dm.texts["test"] == text[1_003_854:]  # 111,540 held out
    assert len(dm.texts["val"]) == len(dm.texts["test"]) == 55_770
    assert dm.vocab == "".join(sorted(set(text[:1_003_854])))
    dm.setup()
    x, y = dm._tensors["val"]
    # the evaluation windows tile the validation text: stride 64, y is x shifted by one
    assert decode(x.flatten().tolist(), dm.vocab) == dm.texts["val"][: x.numel()]
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])
    assert x.shape == ((55_770 - 1) // 64, 64)
    assert dm.split_tokens() == {"val": 871 * 64, "test": 871 * 64}


def test_unigram_entropy_closed_forms():
    """The loss floor of a context-free model, which the LM studies draw: ln 4 for four
    equally frequent symbols, the binary entropy of 1/3 for "aab", 0 for one symbol."""
    from stablelab.data.text import unigram_entropy

    assert math.isclose(unigram_entropy("abcd" * 5), math.log(4), rel_tol=1e-12)
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert math.isclose(unigram_entropy("aab"), h, rel_tol=1e-12)
    assert unigram_entropy("zzzz") == 0


def test_random_windows_are_a_function_of_seed_and_step_and_ranks_split_them():
    """Batch g of the loader = windows at offsets from a generator seeded by (seed, g):
    recomputed independently here; two ranks' slices make the one-process global batch;
    resuming mid-epoch continues with the same batches."""
    from stablelab.data import RandomWindowLoader

    data = torch.arange(1000) % 97
    one = RandomWindowLoader(data, 8, 6, seed=5)
    ranks = [RandomWindowLoader(data, 8, 3, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert len(one) == 1000 // (8 * 6) == len(ranks[0])
    batches = list(one)
    for g, (x, y) in enumerate(batches):
        gen = torch.Generator().manual_seed(5 * 1_000_003 + g)
        starts = torch.randint(1000 - 8, (6,), generator=gen)
        for i, s in enumerate(starts.tolist()):
            assert x[i].tolist() == data[s : s + 8].tolist()
            assert y[i].tolist() == data[s + 1 : s + 9].tolist()
    for (x, _), a, b in zip(batches, *ranks, strict=True):
        assert torch.equal(x, torch.cat([a[0], b[0]]))
    one.sampler.set_epoch(1)
    epoch1 = [x for x, _ in one]
    assert not torch.equal(epoch1[0], batches[0][0])  # another epoch, other windows
    it = iter(one)
    for _ in range(5):
        next(it)
    resumed = RandomWindowLoader(data, 8, 6, seed=5)
    resumed.load_state_dict(one.state_dict())
    assert [x.tolist() for x, _ in resumed] == [x.tolist() for x in epoch1[5:]]


def _refuses_a_fifo_without_waiting(tmp_path, datamodule, error):
    """A named pipe as data.path: refused at once (reading it waited for a writer forever;
    /dev/zero read until memory ran out). Run in a thread so that a regression fails here
    instead of hanging the suite."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    caught: list[BaseException] = []

    def build():
        try:
            datamodule(path=str(fifo))
        except BaseException as e:  # noqa: BLE001 - the refusal is checked below
            caught.append(e)

    t = threading.Thread(target=build, daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():  # unblock the reader so the thread can end
        with open(fifo, "w"):
            pass
        pytest.fail("data.path naming a FIFO blocked instead of being refused")
    assert len(caught) == 1 and isinstance(caught[0], error), caught
    assert "not a regular file" in str(caught[0])


def test_text_file_vocabulary_from_training_text_and_unknown_characters(tmp_path):
    from stablelab.config import ConfigError
    from stablelab.data import CharTextDataModule
    from stablelab.data.text import UNKNOWN, decode

    path = tmp_path / "t.txt"
    path.write_text("abcab" * 40 + "abcZ" * 10, encoding="utf-8")  # Z only in held-out text
    dm = CharTextDataModule(path=str(path), block_size=4, train_fraction=0.8)
    assert dm.vocab == "abc" + UNKNOWN and dm.input_spec["vocab"] == dm.vocab
    held = dm.tokens()["val"].tolist() + dm.tokens()["test"].tolist()
    assert decode(held, dm.vocab) == (dm.texts["val"] + dm.texts["test"]).replace("Z", UNKNOWN)
    for bad, msg in (
        (tmp_path / "missing.txt", "no such file"),
        (tmp_path, "a directory"),
    ):
        with pytest.raises(ConfigError, match=msg):
            CharTextDataModule(path=str(bad))
    _refuses_a_fifo_without_waiting(tmp_path, CharTextDataModule, ConfigError)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(ConfigError, match="not UTF-8"):
        CharTextDataModule(path=str(tmp_path / "latin1.txt"))
    (tmp_path / "short.txt").write_text("x" * 50)
    with pytest.raises(ConfigError, match="block_size = 64: the val part"):
        CharTextDataModule(path=str(tmp_path / "short.txt"), block_size=64)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ConfigError, match="empty.txt': the file is empty"):
        CharTextDataModule(path=str(tmp_path / "empty.txt"))
    # one character repeated: loss 0 from the first step, nothing to learn; two will do
    (tmp_path / "one.txt").write_text("a" * 900 + "ab" * 50)
    with pytest.raises(ConfigError, match=r"one character repeated \('a' x 900\)"):
        CharTextDataModule(path=str(tmp_path / "one.txt"), block_size=4)
    (tmp_path / "two.txt").write_text("ab" * 500)
    assert CharTextDataModule(path=str(tmp_path / "two.txt"), block_size=4).vocab == "ab"


@pytest.mark.parametrize(
    ("block_size", "train_fraction"), [(64, 0.9), (8, 0.9), (5, 0.5), (16, 0.97), (3, 0.1)]
)
def test_a_short_text_refusal_names_the_length_that_would_do(tmp_path, block_size, train_fraction):
    """The refusal of a too-short text says how long a text must be: checked against the
    datamodule itself (a text of that length is accepted, one character less is not) and,
    for nanoGPT's split, a hand count: 1,161 training characters and two held-out halves of
    65 for windows of 65 (int(1,291 x 0.9) = 1,161)."""
    from stablelab.config import ConfigError
    from stablelab.data import CharTextDataModule

    def build(n):
        (tmp_path / "t.txt").write_text(("abcdefg" * n)[:n])
        return CharTextDataModule(path=str(tmp_path / "t.txt"), block_size=block_size,
                                  train_fraction=train_fraction)  # fmt: skip

    with pytest.raises(ConfigError) as e:
        build(block_size + 1)
    said = str(e.value)
    need = int(said.split("a text of at least ")[1].split(" characters")[0].replace(",", ""))
    if (block_size, train_fraction) == (64, 0.9):
        assert need == 1291
    assert build(need).texts  # accepted
    with pytest.raises(ConfigError):
        build(need - 1)


@pytest.mark.parametrize("kind", ["memory", "windows"])
def test_a_batch_offset_runs_the_data_order_ahead_across_epochs(kind):
    """With batch_offset W, batch b of epoch e is the plain order's global batch
    e * len + b + W (a rollback's skipped batches), also past the end of an epoch."""
    from stablelab.data.loader import InMemoryLoader, RandomWindowLoader

    def make():
        if kind == "memory":
            x = torch.arange(40).float()[:, None]
            return InMemoryLoader(x, torch.arange(40), batch_size=4, shuffle=True,
                                  drop_last=True, seed=3)  # fmt: skip
        return RandomWindowLoader(torch.arange(500), block_size=8, batch_size=3, seed=3)

    plain = make()
    order = []
    for e in range(4):
        plain.sampler.set_epoch(e)
        order += [b[0].clone() for b in plain]
    n = len(plain)
    ahead = make()
    ahead.batch_offset = 13
    for e in range(2):
        ahead.sampler.set_epoch(e)
        for b, batch in enumerate(ahead):
            assert torch.equal(batch[0], order[e * n + b + 13]), (e, b)
