"""Security promises checked on the real thing: no mocks, real servers, real flows.

1. Every server the project starts (Prefect server, its process worker, the MLflow
   server of `msls quickstart`, and `msls ui`) listens on loopback only: read from the
   kernel's socket tables (/proc/net/tcp, tcp6) and the processes' open files.
2. A signed link's signature, planted in a links file, is never written anywhere a real
   msls-train run (one that hits an expired link, one that completes) writes: every
   file of the data root (MLflow store and artifacts included), Prefect's home and result
   storage, the harness's database, every captured log record (DEBUG, httpx included),
   stdout/stderr, warnings, and the raised exception's traceback.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from flows import services as services_module
from flows.services import POOL, REPO, Services
from flows.services import _wait as wait_until_healthy
from shards.layout import DataLayout
from shards.synthetic import SyntheticConfig, write_synthetic_source
from tasks.download import CHECKSUMS_NAME, DownloadError
from tests.test_deployment import TINY, free_port
from tests.test_download import FakeS3, s3  # noqa: F401 (s3: a fake S3 on 127.0.0.1)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for LISTEN


# --- 1. servers listen on loopback only ------------------------------------------------


def _address(hex_address: str, family: int) -> str:
    """A /proc/net/tcp{,6} address as text: the kernel prints each 32-bit word in host order."""
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    return socket.inet_ntop(family, b"".join(struct.pack("=I", word) for word in words))


def listening_sockets_by_inode() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state on this host."""
    table: dict[int, tuple[str, int]] = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():  # no IPv6 in this kernel
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == TCP_LISTEN:
                hex_address, hex_port = local.split(":")
                table[inode] = (_address(hex_address, family), int(hex_port, 16))
    return table


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets `pid` holds open (empty if it is gone)."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of `pid` from /proc/<pid>/stat, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, _pgrp, session = text.rpartition(")")[2].split()[:4]  # comm may hold spaces
    return state, int(ppid), int(session)


def process_tree(roots: Iterable[int]) -> set[int]:
    """`roots`, their descendants, and everything in their sessions.

    Services start each server with `start_new_session`, so a session holds a server's
    children even once they are orphaned; the parent walk catches any that left it.
    """
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p)))}
    tree = {pid for pid in roots if pid in stats}
    tree |= {pid for pid, (_, _, session) in stats.items() if session in tree}
    grown = True
    while grown:
        children = {pid for pid, (_, ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grown = bool(children)
    return tree


def running(pids: Iterable[int]) -> set[int]:
    """The pids that still run (a zombie has exited: it only waits to be reaped)."""
    return {pid for pid in pids if (stat := _stat(pid)) and stat[0] != "Z"}


def listeners(pids: Iterable[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket held by `pids`."""
    table = listening_sockets_by_inode()
    return sorted(
        (pid, *table[inode]) for pid in pids for inode in socket_inodes(pid) if inode in table
    )


def _wait_for_worker(services: Services, seconds: float = 120) -> None:
    """Until the worker has registered with the server: then it runs everything it will."""
    url = f"{services.prefect_url}/api/work_pools/{POOL}/workers/filter"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = httpx.post(url, json={}, timeout=5)
        if answer.status_code == 200 and answer.json():
            return
        time.sleep(0.5)
    raise AssertionError(f"the worker never registered; see {services.layout.root / 'logs'}")


@contextmanager
def msls_ui(data_root: Path, port: int, log: Path) -> Iterator[int]:
    """`msls ui` in its own session (it becomes the MLflow server); its pid."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}  # the data root's store, as users get
    command = [sys.executable, "-m", "flows.cli", "--data-root", str(data_root), "ui"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # its server's workers, as `stop` does
            os.killpg(process.pid, signal.SIGKILL)


def _stop_and_wait(services: Services, pids: set[int], seconds: float = 30) -> list[str]:
    """`services.stop()`, then until every process of theirs has exited."""
    stopped = services.stop()
    deadline = time.monotonic() + seconds
    while running(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return stopped


def _assert_reader_sees_wildcards() -> None:
    """The /proc reader itself: a socket on every interface must show up as such."""
    with socket.create_server(("0.0.0.0", 0)) as wide:
        port = wide.getsockname()[1]
        assert (os.getpid(), "0.0.0.0", port) in listeners([os.getpid()])
    if socket.has_dualstack_ipv6():
        with socket.create_server(("::", 0), family=socket.AF_INET6) as wide6:
            port = wide6.getsockname()[1]
            assert (os.getpid(), "::", port) in listeners([os.getpid()])


# A "server" that ignores SIGTERM and has a worker child doing the same.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(worker.pid, flush=True)
time.sleep(600)
"""
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def test_stop_kills_a_service_group_that_outlives_its_grace(tmp_path, monkeypatch):
    """`msls stop` returns with every process of a service gone, even one (and its
    worker) that ignores SIGTERM: after STOP_GRACE the group gets SIGKILL."""
    monkeypatch.setattr(services_module, "STOP_GRACE", 1.0)
    services = Services(DataLayout.at(tmp_path / "data"))
    server = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, IGNORE_TERM],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    worker = int(server.stdout.readline())
    services.state_file.parent.mkdir(parents=True, exist_ok=True)
    services.state_file.write_text(json.dumps({"mlflow-server": server.pid}))
    assert services.stop() == ["mlflow-server"]
    assert server.wait(timeout=5) == -signal.SIGKILL  # after ignoring SIGTERM
    assert not services.state_file.exists()
    deadline = time.monotonic() + 5  # the orphaned worker is reaped by init, not by us
    while running([worker]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running([worker])


@pytest.mark.slow
def test_services_listen_on_loopback_only(tmp_path: Path) -> None:
    _assert_reader_sees_wildcards()
    layout = DataLayout.at(tmp_path / "data")
    services = Services(layout, free_port(), free_port())
    ui_port, ui_log = free_port(), tmp_path / "msls-ui.log"
    tree: set[int] = set()
    try:
        with msls_ui(layout.root, ui_port, ui_log) as ui_pid:  # starts while the others do
            services.start_prefect()
            services.start_worker()
            services.start_mlflow()
            _wait_for_worker(services)
            wait_until_healthy(f"http://127.0.0.1:{ui_port}/health", 120, ui_log)
            started = json.loads(services.state_file.read_text())
            tree = process_tree([*started.values(), ui_pid])
            found = listeners(tree)
    finally:
        stopped = _stop_and_wait(services, tree)
    assert set(started) == {"prefect-server", "prefect-worker", "mlflow-server"}
    assert {port for _, _, port in found} >= {
        services.prefect_port,
        services.mlflow_port,
        ui_port,
    }, found
    exposed = [(pid, address, port) for pid, address, port in found if address not in LOOPBACK]
    assert exposed == [], f"listening beyond loopback (pid, address, port): {exposed}"
    assert set(stopped) == set(started)
    assert not running(tree), f"still running after `stop`: {sorted(running(tree))}"
    print(f"\n{len(tree)} processes, {len(found)} listening sockets, all on loopback: {found}")


# --- 2. a signed link's signature is never written ------------------------------------


def needles(secret: str) -> list[bytes]:
    """The secret as it could be stored: raw, UTF-16, and base64 (std and URL-safe) at any
    byte alignment (Prefect stores pickled results base64-encoded in JSON)."""
    raw = secret.encode()
    found = [raw, secret.encode("utf-16-le")]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw)
            # drop the characters that also hold the padding's bits, and the last group,
            # which mixes in whatever follows the secret
            found.append(encoded[(pad * 4 + 2) // 3 : -4])
    return found


def _unpacked(path: Path, data: bytes) -> Iterator[bytes]:
    """Compressed or columnar contents, decoded: a secret in there is not stored verbatim."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            yield from (archive.read(member) for member in archive.namelist())
    elif data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    elif data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        yield repr(pq.read_table(path).to_pylist()).encode()


@dataclass
class Scan:
    """What a search covered and where it hit."""

    files: int = 0
    bytes: int = 0
    hits: list[str] = field(default_factory=list)

    def search(self, where: str, data: bytes, patterns: list[bytes]) -> None:
        self.bytes += len(data)
        # base64 is often wrapped at 76 columns (Prefect's result files are): join the lines
        joined = data.replace(b"\\n", b"").replace(b"\n", b"").replace(b"\r", b"")
        if any(pattern in text for pattern in patterns for text in (data, joined)):
            self.hits.append(where)

    def search_files(self, roots: Iterable[Path], patterns: list[bytes]) -> None:
        """Every regular file under `roots` (each once), and what is packed inside them."""
        seen: set[Path] = set()
        for root in roots:
            for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
                real = path.resolve()
                if real in seen or path.is_symlink() or not path.is_file():
                    continue
                seen.add(real)
                try:
                    data = path.read_bytes()
                except OSError:  # gone meanwhile (another test's temporary file)
                    continue
                self.files += 1
                self.search(str(path), data, patterns)
                for inner in _unpacked(path, data):
                    self.search(f"{path} (unpacked)", inner, patterns)


def serve_synthetic_msls(server: FakeS3, folder: Path) -> None:
    """Put a tiny synthetic MSLS (2 volumes, metadata, checksums) on the fake S3."""
    write_synthetic_source(folder, SyntheticConfig(n_images=120, n_cities=3, images_per_volume=60))
    server.files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


def signed_links(server: FakeS3, path: Path, secret: str) -> Path:
    """A links file as Mapillary hands them out: each link signed with `secret`."""
    query = f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600&X-Amz-Signature={secret}"
    names = [CHECKSUMS_NAME, *sorted(server.files.keys() - {CHECKSUMS_NAME})]
    path.write_text("".join(f"http://127.0.0.1:{server.port}/{name}{query}\n" for name in names))
    return path


@contextmanager
def msls_logs_to_prefect() -> Iterator[None]:
    """What PREFECT_LOGGING_EXTRA_LOGGERS=msls (set by flows/services.py for deployments)
    does: the `msls` loggers also go to the Prefect API, hence into its database."""
    logger = logging.getLogger("msls")
    handlers = [h for h in logging.getLogger("prefect.extra").handlers if h not in logger.handlers]
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


def wait_until_stored(flow_run_id: uuid.UUID, seconds: float = 60) -> None:
    """Until the harness server has written everything about this run to its database.

    Logs and events are sent in the background, and the server persists events (and the
    task-run states they carry) in batches: without this the scan could run too early.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    completed = {
        "filter": {
            "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
            "event": {"name": ["prefect.flow-run.Completed"]},
        }
    }
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            events = client.request("POST", "/events/filter", json=completed).json()
            tasks = client.read_task_runs(flow_run_filter=runs)
            if events["events"] and tasks and all(t.state and t.state.is_final() for t in tasks):
                return
            time.sleep(0.5)
    raise AssertionError(f"flow run {flow_run_id}: not all stored within {seconds:.0f} s")


def prefect_locations() -> list[Path]:
    """Prefect's home, result storage, and the harness's database folder (settings say where)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.server.database.connection_url
    url = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    assert url.startswith("sqlite"), f"expected the harness's sqlite database, got {url[:20]}"
    database = Path(url.partition(":///")[2])
    return [settings.home, settings.results.local_storage_path, database.parent]


def _assert_scan_finds(secret: str, links: Path) -> None:
    """The scan itself: it finds the secret in the links file and in stored encodings."""
    probe, patterns = Scan(), needles(secret)
    probe.search_files([links], patterns)
    pickled = pickle.dumps(RuntimeError(f"GET https://s3/x.zip?X-Amz-Signature={secret}"))
    for offset in range(3):  # wrapped base64 of a pickle, as Prefect stores results
        probe.search(f"base64 {offset}", base64.encodebytes(b"." * offset + pickled), patterns)
    probe.search("utf-16", f"url={secret}".encode("utf-16-le"), patterns)
    assert probe.hits == [str(links), "base64 0", "base64 1", "base64 2", "utf-16"]


def _exception_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error)


@pytest.mark.slow
def test_planted_link_secret_is_never_written(
    prefect_api,
    s3: FakeS3,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    recwarn: pytest.WarningsRecorder,
) -> None:
    from flows.train import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the data root's own store
    caplog.set_level(logging.DEBUG)  # httpx and httpcore request lines included
    secret = f"PLANTED{uuid.uuid4().hex}"
    serve_synthetic_msls(s3, tmp_path / "served")
    links = signed_links(s3, tmp_path / "links.txt", secret)
    data = tmp_path / "data"
    params = {**TINY, "device": "cpu", "source": str(links), "data_root": str(data)}
    vol1, vol2 = "msls_images_vol_1.zip", "msls_images_vol_2.zip"
    flows_began = time.monotonic()
    with msls_logs_to_prefect():
        s3.faults = {vol1: ["500"], vol2: ["403"]}  # a retried fault and an expired link
        with pytest.raises(DownloadError, match="403 Forbidden") as expired:
            train(**params)
        state = train(**params, return_state=True)  # the same links: served this time
    result, flows_s = state.result(), time.monotonic() - flows_began
    wait_until_stored(state.state_details.flow_run_id)
    assert s3.asked_for(vol1) == [None, None] and s3.asked_for(vol2) == [None, None]
    assert Path(result["report"]).is_file()

    patterns, scan = needles(secret), Scan()
    _assert_scan_finds(secret, links)
    locations = [data, *prefect_locations()]
    scan.search_files(locations, patterns)
    for control in (b"HTTP 403 Forbidden from http://127.0.0.1", b"md5: downloaded and verified"):
        database = Scan()  # the expired link's error and `msls` log lines are stored there
        database.search_files([locations[-1]], [control])
        assert database.hits, f"{control!r} is not in the Prefect database: is it the right one?"
    out, err = capsys.readouterr()
    logs = [caplog.text, *(record.getMessage() for record in caplog.records)]
    for where, text in [("stdout", out), ("stderr", err), ("logs", "\n".join(logs))]:
        scan.search(where, text.encode(), patterns)
    scan.search("exception", _exception_text(expired.value).encode(), patterns)
    scan.search("warnings", "\n".join(str(w.message) for w in recwarn).encode(), patterns)
    assert any("HTTP Request: GET http://127.0.0.1" in line for line in logs)  # httpx, redacted
    assert scan.hits == [], f"the planted secret was written to: {scan.hits}"
    print(
        f"\nscanned {scan.files} files, {scan.bytes:,} bytes (files, unpacked contents, "
        f"{len(caplog.records)} log records, {len(recwarn)} warnings, terminal output) in "
        f"{locations}; the two flow runs took {flows_s:.0f} s"
    )
