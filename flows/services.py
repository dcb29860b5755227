"""Local services for the one-command job: a Prefect server, a process worker, MLflow.

`quickstart` starts what is not running yet (all bound to 127.0.0.1, homes under the
data root), deploys prefect.yaml, runs `prefect deployment run msls-train/msls-train
--watch`, and leaves the services up for browsing; `stop` ends them. Every step that
fails stops the whole thing with its reason and the log file to read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import httpx

from shards.atomic import write_text
from shards.layout import DataLayout, sqlite_uri
from tasks.mlflow_store import StoreError, ready_store

REPO = Path(__file__).resolve().parent.parent
POOL = "msls-local"
DEPLOYMENT = "msls-train/msls-train"
STOP_GRACE = 20.0  # seconds a service has to exit on SIGTERM before its group is killed


class ServiceError(RuntimeError):
    """A service did not start or a step failed; the message names the log to read."""


@dataclass(frozen=True)
class Services:
    layout: DataLayout
    prefect_port: int = 4200
    mlflow_port: int = 5000

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def state_file(self) -> Path:
        return self.layout.root / "services.json"

    def env(self) -> dict[str, str]:
        """Environment for every command: our server, our homes, no telemetry."""
        root = self.layout.root.resolve()
        return {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect"),
            "PREFECT_API_URL": f"{self.prefect_url}/api",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "msls",
            # the worker asks this local server for runs every 2 s, not Prefect's 10 s:
            # `msls quickstart` and `prefect deployment run` start up to 8 s sooner
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_API_DATABASE_CONNECTION_URL": sqlite_uri(
                root / "prefect" / "prefect.db", "sqlite+aiosqlite"
            ),  # Prefect builds it from PREFECT_HOME unescaped
            "MLFLOW_TRACKING_URI": self.layout.mlflow_uri,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MSLS_DATA": str(root),
            "DO_NOT_TRACK": "1",
        }

    def _log(self, name: str) -> Path:
        path = self.layout.root / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start a long-running command in its own session; record its pid."""
        with open(self._log(name), "ab") as log:
            process = subprocess.Popen(
                args,
                cwd=REPO,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        state = self._state()
        state[name] = process.pid
        write_text(self.state_file, json.dumps(state))
        return process

    def _state(self) -> dict[str, int]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def _run(self, name: str, args: list[str], timeout: float = 600) -> str:
        """Run a short command to completion; ServiceError with its output if it fails."""
        done = subprocess.run(
            args,
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with open(self._log(name), "a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
            raise ServiceError(f"{name} failed ({tail[0]}); see {self._log(name)}")
        return done.stdout

    def start_prefect(self) -> None:
        if _healthy(f"{self.prefect_url}/api/health"):
            return
        server = self._spawn(
            "prefect-server",
            [
                *_bin("prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.prefect_port),
            ],
        )
        _wait(f"{self.prefect_url}/api/health", 120, self._log("prefect-server"), server)

    def start_mlflow(self) -> None:
        if _healthy(f"{self.mlflow_url}/health"):
            return
        try:  # made here, not by the server: `msls ui` or a run may open it meanwhile
            ready_store(self.layout.mlflow_uri)
        except StoreError as error:
            raise ServiceError(str(error)) from error
        server = self._spawn(
            "mlflow-server",
            [
                *_bin("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                self.layout.mlflow_uri,
                "--artifacts-destination",
                self.layout.mlflow_artifacts.resolve().as_uri(),
            ],
        )
        _wait(f"{self.mlflow_url}/health", 120, self._log("mlflow-server"), server)

    def deploy(self) -> None:
        """The work pool (process), the training slots, every deployment in prefect.yaml.

        The slots are this machine's global concurrency limits, one run per accelerator
        (flows/slots.py); made here so that `prefect gcl ls` shows them from the start.
        The pool and the slots are made through this process's client, not by two `prefect`
        commands and a Python child (each a start-up of 5-15 s on 2 busy cores); a pool
        that exists is kept as it is.
        """
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.workers.process import ProcessWorker

        from flows.slots import ensure_limits

        template = ProcessWorker.get_default_base_job_template()
        pool = WorkPoolCreate(name=POOL, type="process", base_job_template=template)
        api = temporary_settings({PREFECT_API_URL: f"{self.prefect_url}/api"})
        try:
            with api, get_client(sync_client=True) as client:
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_work_pool(pool)
                ensure_limits()
        except httpx.HTTPError as error:
            message = f"{self.prefect_url}: work pool or slots not made ({error})"
            raise ServiceError(message) from error
        self._run("deploy", [*_bin("prefect"), "--no-prompt", "deploy", "--all"])

    def start_worker(self) -> None:
        if "prefect-worker" in self._state() and _alive(self._state()["prefect-worker"]):
            return
        self._spawn(
            "prefect-worker",
            [*_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
        )

    def run_training(self, params: dict[str, object], timeout: float) -> None:
        """`prefect deployment run msls-train/msls-train --watch`; ServiceError unless Completed."""
        args = [
            *_bin("prefect"),
            "deployment",
            "run",
            DEPLOYMENT,
            "--watch",
            "--watch-timeout",
            str(int(timeout)),
        ]
        for key, value in params.items():
            args += [
                "--param",
                f"{key}={json.dumps(value) if not isinstance(value, str) else value}",
            ]
        process = subprocess.run(args, cwd=REPO, env=self.env(), timeout=timeout + 60)
        if process.returncode != 0:
            raise ServiceError(
                f"{DEPLOYMENT} did not complete (exit {process.returncode}); see the log above "
                f"and {self._log('prefect-worker')}"
            )

    def stop(self) -> list[str]:
        """End every service this data root started; returns their names.

        Each service's process group (the server and its workers) gets SIGTERM, then up
        to STOP_GRACE seconds to exit; what is left of a group then gets SIGKILL. So
        `msls stop` returns with every process gone, not with a server still shutting
        down (MLflow's gunicorn alone may take its 30 s graceful timeout) or one that
        ignored the signal, holding its port against the next quickstart.
        """
        stopped = {name: pid for name, pid in self._state().items() if _alive(pid)}
        for pid in stopped.values():
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while any(map(_group_alive, stopped.values())) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in stopped.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.state_file.unlink(missing_ok=True)
        return list(stopped)


def _bin(name: str) -> list[str]:
    """The command of this environment's `prefect` or `mlflow` (beside this Python)."""
    path = Path(sys.executable).parent / name
    return [str(path)] if path.exists() else [name]


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs. A zombie does not count: a leader
    whose starter has exited waits to be reaped by init, which may never do it here, so
    `os.killpg(pgid, 0)` would see the group for the whole grace period. Linux reads
    /proc; elsewhere the signal test stands (reaping the leader first if it is ours)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    proc = Path("/proc")
    if (proc / "self" / "stat").exists():
        return any(_runs_in_group(stat, pgid) for stat in proc.glob("[0-9]*/stat"))
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _runs_in_group(stat: Path, pgid: int) -> bool:
    """/proc/PID/stat of a live (not zombie) process of group `pgid`."""
    try:
        state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
    except (OSError, ValueError):  # gone meanwhile
        return False
    return group == str(pgid) and state != "Z"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait(url: str, seconds: float, log: Path, server: subprocess.Popen | None = None) -> None:
    """Until `url` answers 200; ServiceError at once if `server` exits first, else after
    `seconds`: a server that died (a port taken, a broken store) is not waited out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _healthy(url):
            return
        if server is not None and server.poll() is not None:
            raise ServiceError(f"{url}: its server exited ({server.returncode}); see {log}")
        time.sleep(0.5)
    raise ServiceError(f"{url} did not come up within {seconds:.0f} s; see {log}")
