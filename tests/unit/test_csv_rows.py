"""CsvRows in a checkpoint: the rows of every per-step CSV come back exactly (and the file
rewritten from them is byte for byte the appended one), in a compact columnar form."""

from __future__ import annotations

import io
import math

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
