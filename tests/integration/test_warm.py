"""Warm trials (stablelab.warm): a trial forked from the server that did the imports ends
the way `python -m module args` in a fresh interpreter does, checked against that fresh
interpreter itself: its output, exit code, argv, environment, directory, threads joined and
atexit run, and a signal's death; a workflow's trials give the numbers that fresh
processes give; a server that cannot start leaves the trials to fresh interpreters."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from stablelab.warm import WarmProcess, WarmStarter

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork: Linux")

PROBE = textwrap.dedent(
    """
    import atexit, os, signal, sys, threading, time
    print("preloaded", "torch" in sys.modules)
    print("name", __name__, "argv", sys.argv[1:], "argv0", os.path.basename(sys.argv[0]))
    print("cwd", os.getcwd(), "env", os.environ.get("PROBE_X"))
    print("session leader", os.getsid(0) == os.getpid())
    atexit.register(lambda: print("atexit ran", flush=True))
    mode = sys.argv[1]
    if mode == "thread":  # a non-daemon thread outlives the module: joined before the end
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread ended"))).start()
    elif mode == "exit3":
        sys.exit(3)
    elif mode == "message":
        sys.exit("a message for stderr")
    elif mode == "raise":
        raise ValueError("boom")
    elif mode == "interrupt":
        raise KeyboardInterrupt
    elif mode == "sleep":
        time.sleep(2)
    elif mode == "term":  # no handler: the process dies of it
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    print("end of module")
    """
)
MODES = ["ok", "thread", "exit3", "message", "raise", "interrupt", "term"]


def _run(start, cmd, log_path, env):
    with log_path.open("w") as log:
        log.write("header\n")
        log.flush()
        proc = start(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        code = proc.wait()
    return code, log_path.read_text()


def _comparable(text: str) -> list[str]:
    """The log without a traceback's frames (indented: runpy's and the server's differ) and
    without the line that tells the two apart."""
    return [ln for ln in text.splitlines() if not ln.startswith(("preloaded", " "))]


def test_a_warm_trial_ends_as_a_fresh_interpreter_does(tmp_path, monkeypatch):
    (tmp_path / "probe_mod.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PROBE_X": "from-the-trial"}
    starter = WarmStarter({**os.environ, "PROBE_X": "from-the-server"})
    try:
        for mode in MODES:
            cmd = [sys.executable, "-m", "probe_mod", mode, "--flag=1"]
            fresh = _run(subprocess.Popen, cmd, tmp_path / f"fresh_{mode}.log", env)
            warm = _run(starter, cmd, tmp_path / f"warm_{mode}.log", env)
            assert "preloaded False" in fresh[1] and "preloaded True" in warm[1], mode
            assert warm[0] == fresh[0], (mode, warm, fresh)
            assert _comparable(warm[1]) == _comparable(fresh[1]), mode
        # the expected endings themselves (fresh == warm above)
        assert fresh[0] == -15  # "term": killed by SIGTERM
        assert "env from-the-trial" in warm[1] and f"cwd {tmp_path}" in warm[1]
        assert "argv ['term', '--flag=1'] argv0 probe_mod.py" in warm[1]
        assert "name __main__" in warm[1] and "session leader True" in warm[1]
        text = (tmp_path / "warm_thread.log").read_text()
        assert text.index("end of module") < text.index("thread ended") < text.index("atexit")
        assert (
            (tmp_path / "warm_raise.log")
            .read_text()
            .rstrip()
            .endswith("ValueError: boom\natexit ran")
        )
        assert _run(subprocess.Popen, ["true"], tmp_path / "x.log", env)[0] == 0
        assert isinstance(starter.procs[1], WarmProcess) and len(starter.procs) == len(MODES)
    finally:
        starter.close()
    assert starter.server is not None and starter.server.returncode == 0


def test_a_server_that_cannot_start_leaves_the_trials_to_fresh_interpreters(tmp_path, monkeypatch):
    (tmp_path / "probe_mod.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken"
    (broken / "stablelab").mkdir(parents=True)
    (broken / "stablelab" / "__init__.py").write_text("raise ImportError('no stablelab')\n")
    starter = WarmStarter({**os.environ, "PYTHONPATH": str(broken)})
    try:
        code, text = _run(
            starter, [sys.executable, "-m", "probe_mod", "ok"], tmp_path / "a.log", dict(os.environ)
        )
    finally:
        starter.close()
    assert starter.failed and not starter.procs
    assert code == 0 and "preloaded False" in text and "end of module" in text


def test_a_trial_outlives_a_killed_server_and_later_trials_start_fresh(tmp_path, monkeypatch):
    import signal
    import time

    (tmp_path / "probe_mod.py").write_text(PROBE)
    monkeypatch.chdir(tmp_path)
    starter = WarmStarter(dict(os.environ))
    cmd = [sys.executable, "-m", "probe_mod"]
    try:
        with (tmp_path / "a.log").open("w") as log:
            proc = starter([*cmd, "sleep"], log, subprocess.STDOUT, dict(os.environ))
            assert isinstance(proc, WarmProcess)
            assert starter.server is not None
            os.kill(starter.server.pid, signal.SIGKILL)
            start = time.time()
            assert proc.wait() == 1  # its code went with the server
            assert time.time() - start > 0.5  # it was waited for, not given up on
        assert "end of module" in (tmp_path / "a.log").read_text()
        code, text = _run(starter, [*cmd, "ok"], tmp_path / "b.log", dict(os.environ))
        assert code == 0 and "preloaded False" in text
    finally:
        starter.close()


def _metrics(run_dir):
    with (run_dir / "stability.csv").open() as f:
        rows = [r["loss"] for r in csv.DictReader(f)]
    summary = json.loads((run_dir / "summary.json").read_text())
    return rows, {k: summary[k] for k in ("val_loss", "test_loss", "steps", "status")}


def test_a_workflow_s_warm_trials_give_what_fresh_processes_give(tmp_path, monkeypatch):
    """The same two trials through run_trials, warm and with STABLELAB_WARM_TRIALS=0: the
    same loss at every step and the same summary, bit for bit (CPU, deterministic)."""
    from stablelab.workflows import Trial, run_trials

    base = ["model=mlp", "max_train_steps=30", "logger=csv", "plots=false"]
    trials = [Trial("a", ["optimizer.lr=1e-3"]), Trial("b", ["optimizer.lr=3e-2"])]
    warm = run_trials(trials, tmp_path / "warm", base, jobs=2, threads=1, progress=False)
    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")
    fresh = run_trials(trials, tmp_path / "fresh", base, jobs=2, threads=1, progress=False)
    for w, f in zip(warm, fresh, strict=True):
        assert w["returncode"] == f["returncode"] == 0
        rows, summary = _metrics(tmp_path / "warm" / w["name"])
        assert len(rows) == 30 and summary["status"] == "completed"
        assert (rows, summary) == _metrics(tmp_path / "fresh" / f["name"])


def test_one_server_per_environment_is_kept_for_later_phases(monkeypatch):
    """diagnose's phases (1 thread a trial, then 2) reuse their servers: the same one for
    environments that differ only in what a run reads when it runs, another for other
    thread counts; beyond two, the least recently used is ended (none is started here)."""
    from stablelab import warm

    monkeypatch.setattr(warm, "_SERVERS", {})
    env = {"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1"}
    a = warm.starter({**env, "STABLELAB_SWEEP_GROUP": "d/lr_sweep"})
    assert warm.starter({**env, "STABLELAB_SWEEP_GROUP": "d/probe"}) is a
    b = warm.starter({**env, "OMP_NUM_THREADS": "2"})
    assert b is not a and warm.starter(env) is a  # a: the most recently used now
    c = warm.starter({**env, "OMP_NUM_THREADS": "4"})
    assert b.failed and not a.failed and not c.failed  # b ended: later trials start fresh
    assert warm.starter({**env, "OMP_NUM_THREADS": "2"}) is not b
    warm.close_all()
    assert a.failed and c.failed and not warm._SERVERS


def test_warm_trials_only_on_linux_without_gpus_unless_turned_off(monkeypatch, tmp_path):
    from stablelab import warm

    monkeypatch.delenv("STABLELAB_WARM_TRIALS", raising=False)
    monkeypatch.setattr(warm, "GPU_DEVICE_FILES", (str(tmp_path / "nvidiactl"),))
    assert warm.enabled(None) and warm.enabled([])
    assert not warm.enabled(["0", "1"])  # --gpus: each trial its own device
    for off in ("0", "false", "No"):
        monkeypatch.setenv("STABLELAB_WARM_TRIALS", off)
        assert not warm.enabled(None)
    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "1")
    (tmp_path / "nvidiactl").touch()  # a machine with NVIDIA's driver
    assert not warm.enabled(None)


def test_a_ddp_trial_forked_warm_gives_what_a_fresh_one_gives(tmp_path, monkeypatch):
    """A trainer=ddp_cpu trial from the warm server: Lightning starts its second rank by
    running the trial's command again, which must be the trial's (not the server's) command;
    both ranks train, and the losses and summary equal those of a fresh interpreter."""
    from stablelab.workflows import Trial, run_trials

    base = ["model=mlp", "max_train_steps=12", "logger=csv", "plots=false", "trainer=ddp_cpu"]
    trials = [Trial("ddp", ["optimizer.lr=1e-2"])]
    (warm,) = run_trials(trials, tmp_path / "warm", base, jobs=1, threads=1, progress=False)
    monkeypatch.setenv("STABLELAB_WARM_TRIALS", "0")
    (fresh,) = run_trials(trials, tmp_path / "fresh", base, jobs=1, threads=1, progress=False)
    assert warm["returncode"] == fresh["returncode"] == 0
    summary = json.loads((tmp_path / "warm" / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2, summary.get("world_size")
    rows, kept = _metrics(tmp_path / "warm" / "ddp")
    assert len(rows) == 12 and kept["status"] == "completed"
    assert (rows, kept) == _metrics(tmp_path / "fresh" / "ddp")
