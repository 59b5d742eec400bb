"""Read what an offline W&B run recorded, without a network or a W&B account.

An offline run directory (``<run dir>/wandb/offline-run-*/``) holds ``run-<id>.wandb``: a
log of protobuf ``Record`` messages in W&B's framing (the LevelDB log format: a 7-byte file
header, then 32 KiB blocks of chunks, each chunk ``crc32 (4) | length (2) | type (1) |
payload``, a record split over FIRST/MIDDLE/LAST chunks when it crosses a block). ``wandb
sync <dir>`` uploads the same file later. These helpers let tests and users check what a
run logged before syncing it.

W&B's service writes the file in whole 32 KiB blocks and writes the last, partial block
only when it closes the run's stream, which happens *after* ``run.finish()`` has returned
(``finish`` only informs the service; the stream closes asynchronously). Until then the
file ends at a block boundary and the run's last records are missing from it: read it
after :func:`wait_closed`, or finish runs with :func:`stablelab.tracking.finish_and_wait`
(``stablelab.train`` and ``stablelab diagnose`` do: their logs are complete when they
return).
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = 7
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def run_files(run_dir: str | Path) -> list[Path]:
    """All ``.wandb`` files of offline runs under a stablelab run directory."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def _payloads(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file (bad header)")
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            return  # a chunk still being written: the file ends before it
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += left_in_block - 7
        else:
            raise ValueError(f"corrupt W&B run file at byte {pos}")


def records(path: str | Path) -> Iterator[Any]:
    """The protobuf ``Record`` messages of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    for payload in _payloads(Path(path).read_bytes()):
        rec = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated code
        rec.ParseFromString(payload)
        yield rec


def is_closed(path: str | Path) -> bool:
    """Whether the run's log is complete: its last record is the ``exit`` record that
    ``run.finish()`` sends (a run killed before finishing has none)."""
    kinds = [r.WhichOneof("record_type") for r in records(path)]
    return bool(kinds) and kinds[-1] == "exit"


def wait_closed(path: str | Path, timeout: float = 60.0, poll: float = 0.02) -> bool:
    """Wait until W&B's service has written the whole log of a finished run (see the module
    docstring); False if it did not within ``timeout`` seconds. The file is parsed again
    only when its size changed."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    size = -1
    while True:
        now = path.stat().st_size if path.exists() else -1
        if now != size:
            size = now
            if now > 0 and is_closed(path):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def finish_and_wait(run, timeout: float = 30.0) -> bool:
    """Moved to :func:`stablelab.tracking.finish_and_wait` (the training side); kept here
    for code that imported it from this module."""
    from stablelab.tracking import finish_and_wait as _finish

    return _finish(run, timeout)


def _items(items) -> dict[str, Any]:
    out = {}
    for it in items:
        key = it.key or "/".join(it.nested_key)
        out[key] = json.loads(it.value_json)
    return out


def history(path: str | Path) -> list[dict[str, Any]]:
    """Every logged history row (``wandb.log`` call) as a dict."""
    return [
        _items(r.history.item) for r in records(path) if r.WhichOneof("record_type") == "history"
    ]


def config(path: str | Path) -> dict[str, Any]:
    """The run config, merged over every config update (values as W&B stored them)."""
    out: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "config":
            for k, v in _items(r.config.update).items():
                out[k] = v.get("value", v) if isinstance(v, dict) else v
    return out


def summary(path: str | Path) -> dict[str, Any]:
    """The run summary, merged over every summary update."""
    out: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
    return out


def run_info(path: str | Path) -> dict[str, Any]:
    """The run record's identity: ``id``, ``project``, ``group``, ``job_type``, ``tags``,
    ``display_name`` (the last run record wins)."""
    out: dict[str, Any] = {}
    for r in records(path):
        if r.WhichOneof("record_type") == "run":
            run = r.run
            out = {
                "id": run.run_id,
                "project": run.project,
                "group": run.run_group,
                "job_type": run.job_type,
                "tags": list(run.tags),
                "display_name": run.display_name,
            }
    return out
