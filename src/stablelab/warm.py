"""Warm trial processes: a workflow's trials forked from one process that has already
imported torch, Lightning, Hydra and W&B, instead of each paying those imports (~5 s of a
500-step trial's ~30 s on 2 CPU cores).

``python -m stablelab.warm`` (started by :class:`WarmStarter`, never by hand) imports the
modules a run needs, touching no torch thread pool, CUDA or W&B state, says it is ready
and then serves one request per trial: it forks, and the child becomes what
``python -m stablelab.train ARGS`` would have been: its own session, the trial's log as
stdout and stderr, the trial's environment and directory, ``sys.argv``, the module run as
``__main__``, the exit code, non-daemon threads joined and ``atexit`` run before it ends.
What stays shared is only what the imports set up, as in a fresh process of the same
environment (numpy's global generator is reseeded, as a fresh import would; Python's
``random`` reseeds itself on fork).

The protocol, one JSON object a line: requests on stdin (``{"id", "module", "argv", "env",
"cwd", "log"}``), answers on stdout (``{"ready": true}`` once; ``{"id", "pid"}`` when a
trial started, ``{"id", "returncode"}`` when it ended: negative for a signal, as
:class:`subprocess.Popen` says it). End of stdin: the server waits for its trials, then
exits. Used on Linux machines without GPUs (see :func:`enabled`);
``STABLELAB_WARM_TRIALS=0`` turns it off (every trial then starts a fresh interpreter).
``ps`` shows a warm trial as ``python -m stablelab.warm`` (the server's command line).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

PRELOAD = (  # what a run imports (stablelab.train itself not: it runs as __main__)
    "torch",
    "lightning",
    "lightning.pytorch",
    "hydra",
    "omegaconf",
    "wandb",
    "torchmetrics",
    "matplotlib",
    "stablelab.config",
    "stablelab.console",
    "stablelab.launch",
    "stablelab.tracking",
    "stablelab.summary",
    "stablelab.module",
    "stablelab.callbacks",
    "stablelab.contract",
    "stablelab.threads",
    "stablelab.stability",
    "stablelab.checkpoints",
    "stablelab.preflight",
    "stablelab.runinfo",
    "stablelab.data",
    "stablelab.models",
    "stablelab.analysis.plots",
)


GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA's driver, AMD's (ROCm)


def enabled(devices: Sequence[str] | None) -> bool:
    """Whether a workflow's trials start warm: on Linux (fork after imports, no threads
    running), on a machine without GPUs (a CUDA or ROCm runtime that an import touched
    before the fork is unusable after it, and each trial sets up its own device), unless
    ``STABLELAB_WARM_TRIALS=0``."""
    off = os.environ.get("STABLELAB_WARM_TRIALS", "1").strip().lower() in ("0", "false", "no")
    return (
        sys.platform.startswith("linux")
        and not devices
        and not off
        and not any(os.path.exists(f) for f in GPU_DEVICE_FILES)
    )


def _exit_code(code: Any) -> int:
    """What the interpreter exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish() -> None:
    """The interpreter's own end of a process: join the non-daemon threads, run the
    ``atexit`` functions, flush the standard streams."""
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _run_child(req: dict[str, Any]) -> int:
    """In the forked child: become ``python -m <module> <argv>`` and return its exit code."""
    import runpy
    import traceback

    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    if "numpy" in sys.modules:  # a fresh import seeds it from the OS: so do the children
        sys.modules["numpy"].random.seed()
    sys.argv = [req["module"], *req["argv"]]  # argv[0]: runpy sets the module's file
    sys.modules.pop(req["module"], None)  # as in `python -m`: not imported before it runs
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:  # the interpreter's own ending: killed by SIGINT
        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - an uncaught exception: its traceback, exit 1
        traceback.print_exc()
        code = 1
    _finish()
    return code


def _returncode(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def serve() -> None:
    """The server's loop (see the module's docstring)."""
    out = os.dup(1)
    os.dup2(2, 1)  # what the imports print must not reach the protocol
    # a run imports these after Hydra has configured logging, and Lightning's import sets
    # its loggers up by whether the root logger has handlers by then: as if it had
    root = logging.getLogger()
    stand_in = logging.NullHandler()
    root.addHandler(stand_in)
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    root.removeHandler(stand_in)
    for stream in (sys.stdout, sys.stderr):  # nothing of the imports' left to the forks
        stream.flush()

    def say(obj: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the workflow gone: its trials still end here
            os.write(out, (json.dumps(obj) + "\n").encode())

    say({"ready": True})
    children: dict[int, Any] = {}
    buf = b""
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    open_ = True
    while open_ or children:
        if open_ and sel.select(timeout=0.1):
            chunk = os.read(0, 65536)
            open_ = bool(chunk)
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:  # the trial
                    code = 1
                    try:
                        sel.close()
                        os.close(out)
                        code = _run_child(req)
                    finally:
                        os._exit(code)
                children[pid] = req["id"]
                say({"id": req["id"], "pid": pid})
        elif not open_:
            time.sleep(0.1)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                say({"id": children.pop(pid), "returncode": _returncode(status)})


class WarmProcess:
    """A trial forked by the server: :class:`subprocess.Popen`'s ``pid``, ``returncode``,
    ``wait`` and ``send_signal``."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self._started, self._ended = threading.Event(), threading.Event()

    def wait(self) -> int:
        self._ended.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None and self.pid is not None:
            os.kill(self.pid, signum)


def _outlive(proc: WarmProcess) -> None:
    """Wait for a trial whose server is gone to end (it is no child of this process)."""
    while proc.pid is not None:
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:  # pragma: no cover - its pid taken by another user's process
            break
        time.sleep(0.5)
    proc.returncode = 1
    proc._ended.set()


class WarmStarter:
    """Starts trials as forks of one warm server (``python -m stablelab.warm``); a
    ``subprocess.Popen`` stand-in for ``[python, -m, module, *args]`` commands. If the
    server cannot start, or a command is not of that form, the trial starts a fresh
    interpreter instead (the same run, only slower)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.server: subprocess.Popen | None = None
        self.failed = False
        self.next_id = 0
        self.procs: dict[int, WarmProcess] = {}
        self.ready = threading.Event()
        self.errors: IO[str] | None = None

    def _start(self) -> bool:
        """Start the server once (under the lock); False when it is not there."""
        if self.server is None and not self.failed:
            self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 - the server's life
            self.server = subprocess.Popen(
                [sys.executable, "-m", "stablelab.warm"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.errors,
                env=self.env,
                start_new_session=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
            self.ready.wait()
            if self.failed:
                self.errors.seek(0)
                last = (self.errors.read().strip().splitlines() or ["no output"])[-1]
                print(
                    f"stablelab: the warm trial server did not start ({last}); each trial "
                    "starts a fresh interpreter",
                    file=sys.stderr,
                    flush=True,
                )
        return not self.failed

    def _read(self) -> None:
        assert self.server is not None and self.server.stdout is not None
        for line in self.server.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self.ready.set()
                continue
            proc = self.procs[msg["id"]]
            if "pid" in msg:
                proc.pid = msg["pid"]
                proc._started.set()
            else:
                proc.returncode = msg["returncode"]
                proc._ended.set()
        # the server is gone (before it was ready, or killed): later trials start fresh
        # interpreters; one it had started ends when its process does (its exit code
        # unknown: 1)
        self.failed = True
        self.ready.set()
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                proc._started.set()
                threading.Thread(target=_outlive, args=(proc,), daemon=True).start()

    def prepare(self) -> None:
        """Start the server now (its imports take seconds) rather than in the first
        trial's start."""
        with self.lock:
            self._start()

    def __call__(self, cmd: list[str], stdout: IO[str], stderr: Any, env: dict[str, str],
                 start_new_session: bool = True) -> Any:  # fmt: skip
        """Start ``cmd`` (``[python, -m, module, *args]``) with ``stdout`` (a file: the
        trial's log, stderr joined to it) and ``env``, in a session of its own."""
        warm = len(cmd) > 2 and cmd[0] == sys.executable and cmd[1] == "-m"
        proc = self._fork(cmd, stdout, env) if warm and start_new_session else None
        if proc is None:
            return subprocess.Popen(
                cmd, stdout=stdout, stderr=stderr, env=env, start_new_session=start_new_session
            )
        proc._started.wait()
        return proc

    def _fork(self, cmd: list[str], stdout: IO[str], env: dict[str, str]) -> WarmProcess | None:
        """Ask the server for the trial; None where there is no server."""
        with self.lock:
            if not self._start():
                return None
            assert self.server is not None and self.server.stdin is not None
            self.next_id += 1
            proc = self.procs[self.next_id] = WarmProcess()
            req = {
                "id": self.next_id,
                "module": cmd[2],
                "argv": cmd[3:],
                "env": env,
                "cwd": os.getcwd(),
                "log": os.path.abspath(stdout.name),
            }
            stdout.flush()
            try:
                self.server.stdin.write((json.dumps(req) + "\n").encode())
                self.server.stdin.flush()
            except OSError:  # the server is gone
                del self.procs[self.next_id]
                self.failed = True
                return None
        return proc

    def close(self) -> None:
        """End the server (after its running trials end); later trials start fresh."""
        with self.lock:
            self.failed = True
        if self.server is not None:
            with contextlib.suppress(OSError):
                assert self.server.stdin is not None
                self.server.stdin.close()
            self.server.wait()
        if self.errors is not None:
            self.errors.close()


# what a run reads when it runs, not when it imports: servers differ in nothing else
RUN_TIME_KEYS = frozenset(
    {"STABLELAB_SWEEP_GROUP", "STABLELAB_PROGRESS", "PYTEST_CURRENT_TEST"}  # (pytest's: per test)
)
_SERVERS: dict[tuple[tuple[str, str], ...], WarmStarter] = {}
_SERVERS_LOCK = threading.Lock()
KEEP = 2  # servers kept for later workflow phases (diagnose: 1 thread a trial, then 2)


def starter(env: dict[str, str]) -> WarmStarter:
    """The starter for trials with ``env``: one server per environment (less the keys a
    run reads only when it runs), kept for the process's later workflows and phases (each
    fork is of a server that has done nothing but its imports); the least recently used
    beyond :data:`KEEP` is ended, all of them when the process exits."""
    key = tuple(sorted((k, v) for k, v in env.items() if k not in RUN_TIME_KEYS))
    with _SERVERS_LOCK:
        found = _SERVERS.pop(key, None)
        if found is None or found.failed:
            found = WarmStarter(env)
        _SERVERS[key] = found  # the most recent last
        old = list(_SERVERS)[:-KEEP]
        ended = [_SERVERS.pop(k) for k in old]
    for s in ended:
        s.close()
    return found


@atexit.register
def close_all() -> None:
    """End every server (each after its running trials)."""
    with _SERVERS_LOCK:
        servers = list(_SERVERS.values())
        _SERVERS.clear()
    for s in servers:
        s.close()


if __name__ == "__main__":
    serve()
