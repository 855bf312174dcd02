"""Child processes of lapstream (the demo's worker, the tests', the benchmark's):
start a worker, wait for its HTTP endpoint, stop a process group."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        time.sleep(0.2)
    return False


def _spawn(cmd: list[str], log_path: str | None, env: dict | None) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (``stop_process`` stops its group), its
    output appended to ``log_path`` (else dropped), ``env`` over ours; it gets
    SIGTERM when this process dies (``die_with_parent``)."""
    from streams.broker import die_with_parent

    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent, env={**os.environ, **(env or {})})
    finally:
        if log_path:
            log.close()   # the child has its own copy


def start_worker(bootstrap: str, http_port: int, worker_id: str = "demo-1", log_path: str | None = None,
                 session_timeout: float = 2.0, env: dict | None = None,
                 data_dir: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streams.cli", "worker", "--broker", f"kafka://{bootstrap}",
           "--http-port", str(http_port), "--worker-id", worker_id, "--no-create-topics",
           "--session-timeout", str(session_timeout)]
    if data_dir is not None:   # else Faust's $TMPDIR/lapstream-<worker id>, shared and never removed
        cmd += ["--data-dir", data_dir]
    return _spawn(cmd, log_path, env)


def start_gateway(bootstrap: str, port: int, log_path: str | None = None,
                  host: str = "127.0.0.1", env: dict | None = None) -> subprocess.Popen:
    """``lapstream serve`` for ``demo --web``: the scoreboard page and the API."""
    cmd = [sys.executable, "-m", "streams.cli", "serve", "--broker", f"kafka://{bootstrap}",
           "--host", host, "--port", str(port)]
    return _spawn(cmd, log_path, env)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
