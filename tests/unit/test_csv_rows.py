"""CsvRows in a checkpoint: the rows of every per-step CSV come back exactly (and the file
rewritten from them is byte for byte the appended one), in a compact columnar form."""

from __future__ import annotations

import io
import math

import pytest
import torch

from stablelab.callbacks.base import CsvRows

FIELDS = ["step", "loss", "lr", "events", "flag"]


def _rows(n: int) -> list[dict]:
    special = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 0.1 + 0.2, 1e308]
    return [
        {
            "step": i,
            "loss": special[i % len(special)] if i % 3 == 0 else 1.0 / (i + 1),
            "lr": None if i % 4 == 0 else 3e-3 * i / n,  # a column with empty cells
            "events": "" if i % 5 else "loss_spike;grad_norm_spike",
            "flag": bool(i % 2),
        }
        for i in range(n)
    ]


def _through_a_checkpoint(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return type(a) is type(b) and a == b


def test_rows_come_back_exactly_and_the_file_is_rewritten_byte_for_byte(tmp_path):
    rows = _rows(1000)
    src = CsvRows("t.csv", FIELDS)
    src.add(tmp_path, rows, write=True)
    appended = (tmp_path / "t.csv").read_bytes()
    state = _through_a_checkpoint(src.state_dict())
    back = CsvRows("t.csv")
    back.load_state_dict(state)
    assert back.fields == FIELDS and len(back.rows) == len(rows)
    for got, want in zip(back.rows, rows, strict=True):
        assert list(got) == FIELDS
        assert all(_same(got[k], want[k]) for k in FIELDS), (got, want)
    back.rewrite(tmp_path)
    assert (tmp_path / "t.csv").read_bytes() == appended
    # numbers travel as tensors, the rest as lists
    cols = state["columns"]
    assert (
        isinstance(cols["step"]["int"], torch.Tensor) and cols["step"]["int"].dtype == torch.int64
    )
    assert cols["loss"]["float"].dtype == torch.float64 and "none" not in cols["loss"]
    assert cols["lr"]["none"].sum().item() == 250
    assert cols["events"]["text_at"].tolist() == list(range(0, 1000, 5))  # the non-empty
    assert isinstance(cols["flag"]["list"], list)


def test_a_long_runs_rows_stay_small_in_a_checkpoint():
    """100k steps of five numeric columns: ~4 MB of tensors (one Python list per row was
    9 MB and 0.3 s of pickling per checkpoint)."""
    rows = [{"step": i, "a": i * 0.5, "b": 1.0 / (i + 1), "c": 0.0, "d": math.inf}
            for i in range(100_000)]  # fmt: skip
    src = CsvRows("g.csv", list(rows[0]))
    src.rows = rows
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    assert len(buf.getvalue()) < 100_000 * 5 * 8 * 1.05


def test_an_older_checkpoints_row_lists_still_load():
    state = {"fields": ["step", "loss"], "rows": [[0, 2.5], [1, None]]}
    back = CsvRows("x.csv")
    back.load_state_dict(_through_a_checkpoint(state))
    assert back.rows == [{"step": 0, "loss": 2.5}, {"step": 1, "loss": None}]


def test_an_empty_file_and_no_fields():
    back = CsvRows("e.csv")
    back.load_state_dict(_through_a_checkpoint(CsvRows("e.csv").state_dict()))
    assert back.rows == [] and back.fields == []


def test_checkpoints_taken_as_rows_come_each_hold_every_row_so_far(tmp_path):
    """The columns are kept up to date between checkpoints (not rebuilt each time): every
    state decodes to exactly the rows added before it, also after the rows were replaced
    (a resume) or the fields changed (a monitor's columns set at setup)."""
    rows = _rows(300)
    live = CsvRows("t.csv", FIELDS)
    for lo in range(0, 300, 70):
        live.add(None, rows[lo : lo + 70], write=False)
        back = CsvRows("t.csv")
        back.load_state_dict(_through_a_checkpoint(live.state_dict()))
        want = rows[: lo + 70]
        assert len(back.rows) == len(want)
        assert all(_same(g[k], w[k]) for g, w in zip(back.rows, want, strict=True) for k in FIELDS)
    live.rows = rows[:10]  # replaced wholesale, fewer rows
    back.load_state_dict(_through_a_checkpoint(live.state_dict()))
    assert [r["step"] for r in back.rows] == list(range(10))
    live.fields = ["step", "events"]
    back.load_state_dict(_through_a_checkpoint(live.state_dict()))
    assert back.fields == ["step", "events"] and list(back.rows[3]) == ["step", "events"]
    live.add(None, [{"step": 10, "events": None}], write=False)  # a None in a text column
    back.load_state_dict(_through_a_checkpoint(live.state_dict()))
    assert back.rows[-1] == {"step": 10, "events": None} and len(back.rows) == 11


def _mixed(n: int) -> list[dict]:
    """Columns that cannot stay compact: ints then floats, Nones then ints, an int beyond
    int64, a float column that later gets text."""
    return [
        {
            "a": i if i < n // 2 else i + 0.5,
            "b": None if i < 3 else i,
            "c": 2**70 if i == n - 1 else i,
            "d": 0.25 * i if i != n // 3 else "text",
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("make, fields", [(_rows, FIELDS), (_mixed, ["a", "b", "c", "d"])])
def test_rows_in_memory_read_back_as_the_dicts_added(make, fields):
    """Index, negative index, slices, iteration, column and == against the list of dicts
    itself: every value of the same type and bits (bools stay bools, -0.0 and NaN too)."""
    want = make(1000)
    table = CsvRows("t.csv", fields)
    for lo in range(0, 1000, 97):  # as flushes add them
        table.add(None, want[lo : lo + 97], write=False)
    rows = table.rows
    assert len(rows) == 1000

    def same_rows(got, ref):
        assert len(got) == len(ref)
        for g, w in zip(got, ref, strict=True):
            assert list(g) == fields
            assert all(_same(g[k], w[k]) for k in fields), (g, w)

    same_rows([rows[i] for i in range(1000)], want)
    same_rows([rows[-1], rows[-1000]], [want[-1], want[0]])
    same_rows(list(rows), want)
    for s in (slice(5, 17), slice(None, None, 7), slice(-3, None), slice(990, 5000)):
        same_rows(rows[s], want[s])
    for k in fields:
        assert all(_same(g, w[k]) for g, w in zip(rows.column(k), want, strict=True))
    with pytest.raises(IndexError):
        rows[1000]
    nan_free = [{"x": i, "y": 0.5 * i} for i in range(10)]
    other = CsvRows("u.csv", ["x", "y"])
    other.add(None, nan_free, write=False)
    assert other.rows == nan_free and other.rows != nan_free[:9]
    assert other.rows != [*nan_free[:9], {"x": 9, "y": 4.0}]


def test_a_missing_field_is_none_and_an_unknown_one_is_refused():
    table = CsvRows("t.csv", ["step", "loss"])
    table.add(None, [{"step": 1}], write=False)
    assert table.rows[0] == {"step": 1, "loss": None}
    with pytest.raises(ValueError, match=r"\['lsos'\] are not among \['step', 'loss'\]"):
        table.add(None, [{"step": 2, "lsos": 1.0}], write=False)


def test_extra_fields_stay_in_memory_only(tmp_path):
    """A field kept for the owner (grad_norms' running clip fraction): not in the file, not in
    the checkpoint; after a load it is None until the owner sets it again."""
    table = CsvRows("g.csv", ["step", "clipped"], extra=["frac"])
    table.add(tmp_path, [{"step": 1, "clipped": 1.0, "frac": 1.0},
                         {"step": 2, "clipped": 0.0, "frac": 0.5}], write=True)  # fmt: skip
    assert (tmp_path / "g.csv").read_text().splitlines() == ["step,clipped", "1,1.0", "2,0.0"]
    state = _through_a_checkpoint(table.state_dict())
    assert state["fields"] == ["step", "clipped"] and "frac" not in state["columns"]
    back = CsvRows("g.csv", extra=["frac"])
    back.load_state_dict(state)
    assert back.rows.column("frac") == [None, None]
    back.rows.set_column("frac", [1.0, 0.5])
    assert back.rows == [{"step": 1, "clipped": 1.0, "frac": 1.0},
                         {"step": 2, "clipped": 0.0, "frac": 0.5}]  # fmt: skip
    with pytest.raises(ValueError, match="3 values for 2 rows"):
        back.rows.set_column("frac", [1.0, 0.5, 0.3])


def test_a_long_runs_rows_take_a_fraction_of_the_memory_of_dicts():
    """100k rows shaped like grad_norms.csv's (an int, five floats, a mostly empty text
    column), measured with tracemalloc: held column by column they take ~8 bytes a value,
    under 80 bytes a row; the same rows as dicts take over 5 times that (~430 bytes: each
    float is an object of its own)."""
    import gc
    import tracemalloc

    n, fields = 100_000, ["step", "loss", "g", "gc", "clipped", "thr", "event"]

    def row(i):
        event = "" if i % 100 else "spike"
        return {"step": i, "loss": 1.0 / (i + 1), "g": i * 0.25, "gc": i * 0.125,
                "clipped": float(i % 2), "thr": i + 0.5, "event": event}  # fmt: skip

    def measured(build):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        held = build()
        size = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        del held
        return size / n

    def columns():
        table = CsvRows("g.csv", fields)
        for lo in range(0, n, 1000):  # made one flush at a time, as in a run
            table.add(None, [row(i) for i in range(lo, lo + 1000)], write=False)
        return table

    as_columns = measured(columns)
    as_dicts = measured(lambda: [row(i) for i in range(n)])
    assert as_columns < 80, as_columns
    assert as_dicts > 5 * as_columns, (as_dicts, as_columns)
