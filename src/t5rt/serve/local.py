"""`t5rt serve` as a child process on this machine (the tests and the load bench start one).

    with LocalServer(export_dir, replicas=2, device="cpu") as srv:    # waits for GET /healthz
        Client(srv.url, srv.api_key).generate(...)
    # exit: SIGTERM (the command shuts Serve and its local Ray down), then SIGKILL for whatever
    # of the child's session is left (Ray's GCS, raylet and workers all belong to it)

Linux only (/proc), like Ray's local mode here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import T5rtError

MODEL_TITLE = b"ray::ServeReplica:t5rt:T5Model"  # process title of a model replica (app t5rt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid`."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(p))
    return pids


class LocalServer:
    def __init__(self, export_dir: str | Path, *, replicas: int = 1, device: str = "cpu", api_key: str | None = None,
                 extra_args: tuple[str, ...] = (), start_timeout_s: float = 180.0, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = log or Path(tempfile.mkstemp(prefix="t5rt-serve-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "t5rt", "serve", str(export_dir), "--host", "127.0.0.1", "--port", str(self.port),
               "--replicas", str(replicas), "--device", device, *extra_args]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)  # always a local instance
        if api_key:
            env["T5RT_API_KEY"] = api_key  # not on the command line (visible to every user)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        req = urllib.request.Request(self.url + "/healthz")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        while True:
            if self.proc.poll() is not None:
                raise T5rtError(f"t5rt serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise T5rtError(f"t5rt serve not healthy after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def model_replicas(self) -> list[int]:
        """PIDs of the model replica processes."""
        out = []
        for pid in session_pids(self.proc.pid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(MODEL_TITLE):
                    out.append(pid)
            except OSError:
                pass
        return out

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        sid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while (left := session_pids(sid)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
