"""The trial pool: every trial of a workflow is a normal ``stablelab-train`` run in its own
process, writing its own run directory under the workflow's output directory
(``<out>/<trial name>``) and its output to ``<out>/<trial name>.log``. ``jobs`` trials run at
once, each with ``threads`` torch threads (default: the available cores split between the
jobs); a trial on a GPU sees only its own device. Progress: one line per finished trial, and
for a phase of one long trial its quarters read from the trial's log.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stablelab.warm import enabled as warm_enabled
from stablelab.warm import starter as warm_starter


@dataclass
class TrialOptions:
    """How a workflow runs its trials: the Hydra overrides every trial gets, how many run
    at once, torch threads per trial (None: the available cores / jobs), progress output,
    and GPU ids (one trial per device at a time)."""

    overrides: list[str] = field(default_factory=list)
    jobs: int = 1
    threads: int | None = None
    progress: bool = True
    devices: list[str] | None = None

    def trials(self, trials: list[Trial], out_dir: str | Path, label: str, **kw: Any):
        """:func:`run_trials` with these options (``kw`` overrides one, e.g. ``jobs=1``)."""
        o = {"jobs": self.jobs, "devices": self.devices, **kw}
        return run_trials(
            trials, out_dir, list(self.overrides), o["jobs"], self.threads, label,
            self.progress, o["devices"],
        )  # fmt: skip


@dataclass
class Trial:
    name: str
    overrides: list[str] = field(default_factory=list)


class TrialsInterrupted(Exception):
    """A workflow stopped by a signal (Ctrl-C, SIGTERM): the running trials were passed
    the signal and stopped after their step with a checkpoint (resumable), the others
    did not start, and nothing was analysed."""

    def __init__(self, signum: int, out_dir: Path, stopped: list[str], finished: list[str],
                 not_started: list[str]) -> None:  # fmt: skip
        self.signum, self.out_dir = signum, out_dir
        self.stopped, self.finished, self.not_started = stopped, finished, not_started
        name = signal.Signals(signum).name
        parts = [
            f"{len(finished)} finished",
            f"{len(stopped)} stopped after their step, resumable ({', '.join(stopped)}: "
            "each one's summary.json holds its resume_command)"
            if stopped
            else "",
            f"{len(not_started)} not started ({', '.join(not_started)})" if not_started else "",
        ]
        super().__init__(
            f"interrupted by {name}; nothing was analysed. Trials in {out_dir}: "
            + "; ".join(p for p in parts if p)
        )


class TrialsFailed(Exception):
    """No trial of a workflow got as far as writing a summary (each was refused or failed
    at start-up): nothing to analyse. Names the first one's last log line."""

    def __init__(self, out_dir: Path, results: list[dict[str, Any]]) -> None:
        self.out_dir = out_dir
        self.refused = all(r["returncode"] == 2 for r in results)
        first = results[0]["name"]
        try:
            lines = (out_dir / f"{first}.log").read_text("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(an empty log)")
        super().__init__(
            f"none of the {len(results)} trial(s) started training, nothing was analysed; "
            f"{first}'s log ends: {last[:600]} (see {out_dir / (first + '.log')})"
        )


class _Signalled(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_signalled(signum: int, frame: Any) -> None:
    raise _Signalled(signum)


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _Processes:
    """The trial processes of one :func:`run_trials`: each in its own process group (a
    terminal's Ctrl-C reaches the workflow only, which passes it on once: a second one
    would stop a trial at once), GPU ids handed out one trial per device."""

    def __init__(self, out_dir: Path, base: Sequence[str], env: dict, devices) -> None:
        import queue

        self.out_dir, self.base, self.env, self.devices = out_dir, list(base), env, devices
        self.free: queue.Queue[str | None] = queue.Queue()
        for d in devices or []:
            self.free.put(str(d))
        self.running: dict[str, Any] = {}
        self.lock, self.stopping = threading.Lock(), threading.Event()
        # the trials as forks of one process that has done the imports (stablelab.warm)
        self.warm = warm_starter(env) if warm_enabled(devices) else None
        self.popen: Any = self.warm or subprocess.Popen

    def run(self, t: Trial) -> dict[str, Any]:
        run_dir = self.out_dir / t.name
        cmd = [
            sys.executable, "-m", "stablelab.train", *self.base, *t.overrides,
            f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        out = {"name": t.name, "run_dir": str(run_dir), "returncode": None, "seconds": 0.0}
        start = time.time()
        device = self.free.get() if self.devices else None
        env = self.env if device is None else {**self.env, "CUDA_VISIBLE_DEVICES": device}
        try:
            with (self.out_dir / f"{t.name}.log").open("w") as log:
                if device is not None:
                    log.write(f"CUDA_VISIBLE_DEVICES={device}\n")
                log.write(" ".join(cmd) + "\n")
                log.flush()
                if self.warm is not None:
                    self.warm.prepare()
                with self.lock:
                    if self.stopping.is_set():  # interrupted before it could start
                        return {**out, "not_started": True}
                    proc = self.popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                    )  # fmt: skip
                    self.running[t.name] = proc
                out["returncode"] = proc.wait()
                with self.lock:
                    self.running.pop(t.name, None)
        finally:
            if device is not None:
                self.free.put(device)
        return {**out, "seconds": time.time() - start}

    def send(self, signum: int) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            signum = signal.SIGTERM  # (what a trial stops on cleanly)
        with self.lock:
            procs = list(self.running.values())
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)

    def stop(self, pool: ThreadPoolExecutor, signum: int) -> None:
        """Pass ``signum`` to the running trials (each stops after its step with a
        checkpoint) and wait for them; cancel the trials not started. A second signal
        while waiting is passed on too."""
        self.stopping.set()
        self.send(signum)
        while True:
            try:
                pool.shutdown(wait=True, cancel_futures=True)
                return
            except (KeyboardInterrupt, _Signalled) as e:
                self.send(getattr(e, "signum", signal.SIGINT))


def _unfinished(r: dict[str, Any]) -> bool:
    """A trial stopped before its end: its summary says so (a signal that came after the
    run completed leaves a completed run), or, without one, it died of a signal."""
    from stablelab.analysis.runs import has_summary, read_summary
    from stablelab.analysis.sweep import UNFINISHED

    if has_summary(r["run_dir"]):
        with contextlib.suppress(ValueError):
            return read_summary(r["run_dir"]).get("status") in UNFINISHED
    return r["returncode"] >= 128 or r["returncode"] < 0


def _interrupted(signum: int, out_dir: Path, futures: dict) -> TrialsInterrupted:
    """The account of a stopped workflow: which trials finished, stopped before their end
    (resumable), did not start."""
    ok = [f for f in futures if f.done() and not f.cancelled() and f.exception() is None]
    done = [f.result() for f in ok]
    ended = [r for r in done if r["returncode"] is not None]
    by_signal = [r["name"] for r in ended if _unfinished(r)]
    started = {r["name"] for r in done if not r.get("not_started")}
    return TrialsInterrupted(
        signum,
        out_dir,
        stopped=by_signal,
        finished=[r["name"] for r in ended if r["name"] not in by_signal],
        not_started=[t.name for t in futures.values() if t.name not in started],
    )


def run_trials(
    trials: list[Trial],
    out_dir: str | Path,
    base: Sequence[str] = (),
    jobs: int = 1,
    threads: int | None = None,
    label: str = "trials",
    progress: bool = True,
    devices: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run each trial as ``python -m stablelab.train <base> <overrides>`` writing to
    ``out_dir/<name>``; return ``[{"name", "run_dir", "returncode", "seconds"}]`` in the
    trials' order. Output of each goes to ``out_dir/<name>.log``.

    ``devices`` (e.g. GPU ids ``["0", "1"]``): one trial per device at a time, each
    process seeing only its own (``CUDA_VISIBLE_DEVICES``); ``jobs`` becomes their number.
    Ctrl-C or SIGTERM: passed to the running trials (each stops after its step, with a
    checkpoint), the others do not start, and :class:`TrialsInterrupted` is raised.
    """
    from tqdm.auto import tqdm

    from stablelab.analysis.runs import has_summary
    from stablelab.threads import available_cores

    out_dir = Path(out_dir)
    _refuse_finished_trials(trials, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = len(devices) if devices else max(1, int(jobs))
    threads = threads or max(1, available_cores() // jobs)  # the thread policy's cores
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
        "WANDB_SILENT": os.environ.get("WANDB_SILENT", "true"),
        # plain progress lines into the trial's log, which the workflow reads back (an
        # environment variable, not an override: a trial may have no progress callback)
        "STABLELAB_PROGRESS": "plain",
        # the W&B group of every trial of this workflow (unless logger.wandb.group is set)
        "STABLELAB_SWEEP_GROUP": f"{out_dir.resolve().parent.name}/{out_dir.name}",
    }
    procs = _Processes(out_dir, base, env, devices)
    results: dict[str, dict[str, Any]] = {}
    start = time.time()
    interactive = progress and sys.stderr.isatty()  # a bar on a terminal, lines in logs
    if progress:
        print(
            f"[{label}] {len(trials)} trial(s), {jobs} at a time, {threads} thread(s) each, "
            f"in {out_dir}",
            file=sys.stderr if interactive else sys.stdout,
            flush=True,
        )
    bar = tqdm(
        total=len(trials),
        desc=label,
        unit="trial",
        disable=not interactive,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_trials,
        # in a log, quarter lines only where every trial runs at once (one wave: otherwise
        # the trials' own end lines come often enough)
        args=(
            out_dir,
            [t.name for t in trials],
            label,
            bar,
            interactive,
            len(trials) > jobs,
            stop,
        ),  # fmt: skip
        daemon=True,
    )
    if progress:
        watcher.start()
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = {pool.submit(procs.run, t): t for t in trials}
    handlers = _catch_termination()
    try:
        for k, fut in enumerate(as_completed(futures), start=1):
            r = fut.result()
            results[r["name"]] = r
            elapsed = time.time() - start
            eta = elapsed / k * (len(trials) - k)
            bar.update(1)
            bar.set_postfix_str(f"ETA {_fmt_time(eta)}")
            if progress:
                (bar.write if interactive else print)(
                    f"[{label} {k}/{len(trials)}] {r['name']}: {_status(r)} "
                    f"({_fmt_time(r['seconds'])}; elapsed {_fmt_time(elapsed)}, "
                    f"ETA {_fmt_time(eta)})"
                )
    except (KeyboardInterrupt, _Signalled) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        procs.stop(pool, signum)
        raise _interrupted(signum, out_dir, futures) from None
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        pool.shutdown(wait=True, cancel_futures=True)  # (an error: the running ones finish)
        stop.set()
        if watcher.is_alive():
            watcher.join()
        bar.close()
    if progress:
        found = trial_warnings(out_dir, [t.name for t in trials])
        for line in warnings_summary(found, label, len(trials)):
            print(line, file=sys.stderr if interactive else sys.stdout, flush=True)
    ordered = [results[t.name] for t in trials]
    if ordered and not any(has_summary(r["run_dir"]) for r in ordered):
        raise TrialsFailed(out_dir, ordered)
    return ordered


def _catch_termination() -> dict[int, Any]:
    """SIGTERM (a scheduler's stop, ``timeout``) and SIGHUP as an exception in the main
    thread, so the workflow passes it to its trials instead of dying and leaving them
    running; returns the handlers to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    # SIGHUP (the terminal closed): the trials run in their own sessions and would not get it
    sigs = [signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])]
    return {sig: signal.signal(sig, _raise_signalled) for sig in sigs}


# a warning of stablelab's own in a trial's log (the job log format of configs/hydra)
_WARNING_LINE = re.compile(
    r"^\[[^\]]*\]\[stablelab(?:\.[\w.]+)?\]\[WARNING\] - stablelab: (.+)$", re.M
)
# what each trial's status line already says (it diverged, or was stopped and can resume)
_IN_STATUS = ("training diverged at step", "to resume: ")


def trial_warnings(out_dir: Path, names: Sequence[str]) -> list[tuple[str, list[str]]]:
    """stablelab's warnings in the trials' logs (the config's, the data's, the model's,
    none of them on the workflow's console otherwise), each distinct one once with the
    trials that gave it, in the order first seen; those the trials' status lines already
    give (divergence, interruption) are left out."""
    found: dict[str, list[str]] = {}
    for name in names:
        try:
            text = (Path(out_dir) / f"{name}.log").read_text("utf-8", "replace")
        except OSError:
            continue
        for message in dict.fromkeys(_WARNING_LINE.findall(text)):
            if not message.startswith(_IN_STATUS):
                found.setdefault(message.rstrip(), []).append(name)
    return list(found.items())


def warnings_summary(
    found: list[tuple[str, list[str]]], label: str, total: int, most: int = 8, width: int = 400
) -> list[str]:
    """The console lines for :func:`trial_warnings` of ``total`` trials: each warning once,
    with the trials that gave it (all, or which); at most ``most`` of them, each cut at
    ``width`` characters."""
    if not found:
        return []
    lines = [f"[{label}] the trials' warnings, each once (their .log files give the context):"]
    for message, names in found[:most]:
        text = message if len(message) <= width else message[: width - 3] + "..."
        if len(names) == total and total > 1:
            who = f"all {total} trials"
        else:
            who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"  - {text} ({who})")
    if len(found) > most:
        lines.append(f"  ... and {len(found) - most} more (see the trials' .log files)")
    return lines


_STEP_LINE = re.compile(r"^step (\d+)/(\d+) \((\d+)%\).*ETA (\S+)\s*$", re.M)


def trial_progress(log: Path) -> tuple[int, int, int, str] | None:
    """The last progress line of a running trial's log: (step, total, percent, ETA)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = _STEP_LINE.findall(tail)
    if not found:
        return None
    step, total, pct, eta = found[-1]
    return int(step), int(total), int(pct), eta


def _watch_trials(
    out_dir, names, label, bar, interactive, quiet_log, stop, every: float = 2.0
) -> None:
    """While trials run: on a terminal, the running trials' step and ETA in the bar;
    in a log (unless ``quiet_log``), a line when a trial passes 25%, 50% and 75% of its
    steps (a long trial, such as diagnose's probe, is not silent until it ends)."""
    reported: dict[str, int] = {}
    while not stop.wait(every):
        running = []
        for name in names:
            p = trial_progress(out_dir / f"{name}.log")
            if p is None or p[0] >= p[1]:
                continue
            step, total, pct, eta = p
            running.append(f"{name} {pct}% (ETA {eta})")
            quarter = pct // 25 * 25
            if not interactive and not quiet_log and quarter > reported.get(name, 0):
                reported[name] = quarter
                print(f"[{label}] {name}: step {step}/{total} ({pct}%), ETA {eta}", flush=True)
        if interactive and running:
            bar.set_postfix_str("; ".join(running))


def _refuse_finished_trials(trials: list[Trial], out_dir: Path) -> None:
    """Trials whose directory already holds a run: running them again would overwrite it
    (and a refused trial would leave the old run to be analysed as if it were new).
    Raises ConfigError naming them, before any trial starts."""
    from stablelab.config import ConfigError
    from stablelab.preflight import occupied_problem

    held = [t.name for t in trials if occupied_problem(out_dir / t.name, None, True)]
    if held:
        stopped = [n for n in held if _unfinished({"run_dir": out_dir / n, "returncode": 0})]
        resume = (
            f" ({', '.join(stopped)}: stopped before its end; resume it with the "
            "resume_command in its summary.json)"
            if stopped
            else ""
        )
        raise ConfigError(
            [
                f"--out = '{out_dir}': already holds the run(s) {', '.join(held)}{resume}; "
                "running them again would overwrite them: choose another --out, or (to "
                "extend a sweep) give only values it does not hold yet: the analysis reads "
                "every run in the folder"
            ]
        )


def _study_excepthook(kind: type, value: BaseException, tb: Any) -> None:
    """A study stopped by Ctrl-C / SIGTERM ends with the account of its trials and exit
    128 + N, as the ``stablelab`` workflows do, not a traceback."""
    if isinstance(value, TrialsInterrupted):
        print(
            f"{Path(sys.argv[0]).parent.name}: {value}. Run the study again to start over "
            "(it empties --out first)",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(128 + value.signum)
    sys.__excepthook__(kind, value, tb)


def study_args(doc: str, study: str) -> Any:
    """The command line every ``experiments/<study>/run.py`` shares: ``--out`` (the trials'
    folder, default ``logs/experiments/<study>``), ``--jobs`` and ``--from-runs`` (train
    nothing: rebuild the study's CSV and plot from the runs already in ``--out``). Without
    ``--from-runs`` an existing ``--out`` is emptied first, so no old trial is mixed in."""
    import argparse
    import shutil

    ap = argparse.ArgumentParser(
        description=doc.split("\n")[0], epilog=doc, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=Path("logs/experiments") / study,
                    help="where the trials run (default: %(default)s)")  # fmt: skip
    ap.add_argument("--jobs", type=int, default=2, help="trials at once (default: 2)")
    ap.add_argument("--from-runs", action="store_true",
                    help="train nothing: rebuild CSV and plot from the runs in --out")  # fmt: skip
    args = ap.parse_args()
    sys.excepthook = _study_excepthook
    if args.from_runs and not args.out.is_dir():
        ap.error(f"--from-runs: no runs in {args.out}")
    if not args.from_runs and args.out.exists():
        shutil.rmtree(args.out)
    return args


def _status(r: dict[str, Any]) -> str:
    from stablelab.analysis.runs import has_summary, read_summary

    if not has_summary(r["run_dir"]):
        return f"failed before writing a summary (exit {r['returncode']}, see {r['name']}.log)"
    try:
        s = read_summary(r["run_dir"])
    except ValueError as e:  # RunFileError: a damaged summary
        return f"unreadable summary ({e})"
    if s.get("status") == "diverged":
        return f"diverged at step {s.get('diverged_at_step')} (infeasible)"
    if s.get("status") != "completed":
        return f"{s.get('status')} (exit {r['returncode']})"
    val = s.get("val_loss")
    tag = (
        "stability not measured (no callbacks.stability)"
        if s.get("unstable") is None
        else "unstable"
        if s.get("unstable")
        else "stable"
    )
    return f"val loss {val:.4g}, {tag}" if val is not None else tag
