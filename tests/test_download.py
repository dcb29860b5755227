"""tasks/download.py against a real HTTP server on 127.0.0.1 with injected faults.

The server plays Mapillary's S3: in-memory files, Range support, and a per-file queue
of faults consumed one per request. Every link carries a fake signature; the failure
tests check that it never reaches logs, the terminal or an exception chain.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tasks.download import (
    CHECKSUMS_NAME,
    DownloadError,
    download_all,
    download_file,
    read_links,
    redact,
)
from tasks.source import SourceSpecError, acquire_source

SECRET = "SECRET123"
QUERY = f"?X-Amz-Signature={SECRET}&X-Amz-Expires=3600"
FAST = {"retries": 3, "backoff_s": 0.001, "timeout_s": 0.3}  # stall below sleeps longer
STALL_S = 1.0
VOL1, VOL2, META = "msls_images_vol_1.zip", "msls_images_vol_2.zip", "msls_metadata.zip"


def _payload(seed: int, size: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


@dataclass
class FakeS3:
    """What the server serves, which faults it injects, and what it was asked."""

    files: dict[str, bytes]
    faults: dict[str, list[str]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, name: str, range_header: str | None) -> str | None:
        with self.lock:
            self.requests.append((name, range_header))
            queue = self.faults.get(name, [])
            return queue.pop(0) if queue else None

    def asked_for(self, name: str) -> list[str | None]:
        """The Range header of each request for `name` (None: no Range)."""
        return [rng for asked, rng in self.requests if asked == name]

    def names(self) -> list[str]:
        """Every served file, checksum file first (the order of the links file)."""
        return [CHECKSUMS_NAME, *sorted(self.files.keys() - {CHECKSUMS_NAME})]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}{QUERY}"

    def links_file(self, tmp_path: Path, names: list[str] | None = None) -> Path:
        path = tmp_path / "links.txt"
        names = names if names is not None else self.names()
        lines = ["# signed links from the MSLS download page", ""]
        path.write_text("\n".join(lines + [self.url(name) for name in names]) + "\n")
        return path


def _checksums(files: dict[str, bytes]) -> bytes:
    lines = [f"{hashlib.md5(data).hexdigest()}  {name}" for name, data in sorted(files.items())]
    return ("\n".join(lines) + "\n").encode()


class _Handler(BaseHTTPRequestHandler):
    state: FakeS3  # set per server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        name = urlsplit(self.path).path.lstrip("/")
        range_header = self.headers.get("Range")
        fault = self.state.next_fault(name, range_header)
        if fault and fault.isdigit():
            return self._status(int(fault))
        data = self.state.files.get(name)
        if data is None:
            return self._status(404)
        if fault == "wrong":
            data = bytes(b ^ 0xFF for b in data)
        start = int(range_header[6:-1]) if range_header and fault != "ignore_range" else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_body(data, start, fault)

    def _send_body(self, data: bytes, start: int, fault: str | None) -> None:
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault in ("drop", "stall"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "stall":
                time.sleep(STALL_S)
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def _status(self, code: int) -> None:
        body = f"<Error><Code>{code}</Code></Error>".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled handler must not hold up teardown

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # broken pipes after a client timeout are the point of some tests


@pytest.fixture
def s3() -> Iterator[FakeS3]:
    files = {VOL1: _payload(1, 96_000), VOL2: _payload(2, 64_000), META: _payload(3, 8_000)}
    state = FakeS3(files={**files, CHECKSUMS_NAME: _checksums(files)})
    handler = type("Handler", (_Handler,), {"state": state})
    server = _Server(("127.0.0.1", 0), handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG everywhere, so httpx's own request lines are captured and checked too."""
    caplog.set_level(logging.DEBUG)


def _assert_secret_kept(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture, exc: BaseException | None
) -> None:
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        assert SECRET not in str(exc) and SECRET not in repr(exc)
        assert SECRET not in "".join(traceback.format_exception(exc))
        for linked in (exc.__cause__, exc.__context__):
            if linked is not None:
                assert SECRET not in str(linked) and SECRET not in repr(linked)
        exc = exc.__cause__ or exc.__context__


def _assert_complete(s3: FakeS3, raw: Path) -> None:
    for name, data in s3.files.items():
        assert (raw / name).read_bytes() == data, name
    assert not list(raw.glob("*.part"))


# --- pure helpers ------------------------------------------------------------------


def test_redact_keeps_host_and_path_only() -> None:
    url = f"https://user:pw@bucket.s3.amazonaws.com:443/a/msls_metadata.zip{QUERY}#frag"
    assert redact(url) == "https://bucket.s3.amazonaws.com:443/a/msls_metadata.zip"


def test_read_links_maps_names_and_skips_comments(s3: FakeS3, tmp_path: Path) -> None:
    links = read_links(s3.links_file(tmp_path))
    assert set(links) == set(s3.files)
    assert links[VOL1] == s3.url(VOL1)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([f"http://h/{CHECKSUMS_NAME}", "ftp://h/x.zip"], ":2: not an http(s)"),
        ([f"http://h/{CHECKSUMS_NAME}", "just some words"], ":2: not an http(s)"),
        ([f"http://h/{CHECKSUMS_NAME}", f"http://h/{VOL1}?a", f"http://h/{VOL1}?b"], ":3: second"),
        ([f"http://h/{VOL1}{QUERY}"], f"no link to {CHECKSUMS_NAME}"),
    ],
)
def test_read_links_refuses_bad_files(tmp_path: Path, lines: list[str], expected: str) -> None:
    path = tmp_path / "links.txt"
    path.write_text("\n".join(lines))
    with pytest.raises(DownloadError, match=re.escape(expected)) as info:
        read_links(path)
    assert str(path) in str(info.value) and SECRET not in str(info.value)


# --- downloads -----------------------------------------------------------------------


def test_happy_path_downloads_and_verifies_everything(
    s3: FakeS3, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    raw = tmp_path / "raw"
    paths = download_all(s3.links_file(tmp_path), raw, workers=3, **FAST)
    assert paths == [raw / name for name in s3.names()]
    _assert_complete(s3, raw)
    assert s3.requests[0] == (CHECKSUMS_NAME, None)  # the checksum file comes first
    assert any("HTTP Request" in r.getMessage() for r in caplog.records if r.name == "httpx")
    assert any("100%" in r.getMessage() for r in caplog.records if r.name == "msls.download")
    _assert_secret_kept(caplog, capsys, None)


def test_rerun_after_success_makes_no_requests(s3: FakeS3, tmp_path: Path) -> None:
    links, raw = s3.links_file(tmp_path), tmp_path / "raw"
    download_all(links, raw, **FAST)
    s3.requests.clear()
    download_all(links, raw, **FAST)
    assert s3.requests == []
    _assert_complete(s3, raw)


def test_rerun_hashes_nothing_but_a_file_changed_since(
    s3: FakeS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.download

    links, raw = s3.links_file(tmp_path), tmp_path / "raw"
    download_all(links, raw, **FAST)
    hashed: list[str] = []
    real = tasks.download.md5_of
    monkeypatch.setattr(
        tasks.download, "md5_of", lambda p, *a: hashed.append(p.name) or real(p, *a)
    )
    download_all(links, raw, **FAST)
    assert hashed == []  # each verified file is remembered by size and mtime
    (raw / VOL1).write_bytes(b"x" * len(s3.files[VOL1]))  # damaged since: same size
    download_all(links, raw, **FAST)
    assert hashed == [VOL1]
    _assert_complete(s3, raw)


def test_resume_appends_to_existing_part_with_range(s3: FakeS3, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    half = len(s3.files[VOL1]) // 2
    (raw / f"{VOL1}.part").write_bytes(s3.files[VOL1][:half])
    download_all(s3.links_file(tmp_path), raw, **FAST)
    assert s3.asked_for(VOL1) == [f"bytes={half}-"]
    _assert_complete(s3, raw)


def test_part_already_complete_gets_416_and_is_verified(s3: FakeS3, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{VOL1}.part").write_bytes(s3.files[VOL1])
    download_all(s3.links_file(tmp_path), raw, **FAST)
    assert s3.asked_for(VOL1) == [f"bytes={len(s3.files[VOL1])}-"]
    _assert_complete(s3, raw)


def test_part_longer_than_the_file_is_restarted(s3: FakeS3, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{VOL1}.part").write_bytes(s3.files[VOL1] + b"junk")  # 416, md5 wrong: start over
    download_all(s3.links_file(tmp_path), raw, **FAST)
    assert s3.asked_for(VOL1) == [f"bytes={len(s3.files[VOL1]) + 4}-", None]
    _assert_complete(s3, raw)


def test_server_ignoring_range_starts_over(s3: FakeS3, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / f"{VOL1}.part").write_bytes(s3.files[VOL1][:1000])
    s3.faults[VOL1] = ["ignore_range"]
    download_all(s3.links_file(tmp_path), raw, **FAST)
    assert s3.asked_for(VOL1) == ["bytes=1000-"]
    _assert_complete(s3, raw)  # not 1000 bytes too long


@pytest.mark.parametrize(
    ("faults", "requests"),
    [(["drop"], 2), (["stall"], 2), (["500", "500"], 3), (["429", "503"], 3), (["wrong"], 2)],
)
def test_transient_faults_are_retried(
    s3: FakeS3,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
    faults: list[str],
    requests: int,
) -> None:
    s3.faults[VOL1] = list(faults)
    raw = tmp_path / "raw"
    download_all(s3.links_file(tmp_path), raw, **FAST)
    asked = s3.asked_for(VOL1)
    assert len(asked) == requests
    if faults[0] in ("drop", "stall"):  # half the file arrived: the retry resumes there
        assert asked[1] == f"bytes={len(s3.files[VOL1]) // 2}-"
    _assert_complete(s3, raw)
    assert any("attempt 1/4 failed" in r.getMessage() for r in caplog.records)
    _assert_secret_kept(caplog, capsys, None)


def test_wrong_bytes_every_time_is_corrupt_at_source(
    s3: FakeS3, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    s3.faults[VOL1] = ["wrong"] * 10
    raw = tmp_path / "raw"
    with pytest.raises(DownloadError, match=f"{VOL1}: corrupt at the source") as info:
        download_all(s3.links_file(tmp_path), raw, **FAST)
    assert len(s3.asked_for(VOL1)) == FAST["retries"] + 1
    assert not (raw / VOL1).exists() and not (raw / f"{VOL1}.part").exists()
    assert (raw / VOL2).exists()  # the other files still completed
    _assert_secret_kept(caplog, capsys, info.value)


def test_403_says_link_expired_and_is_not_retried(
    s3: FakeS3, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    s3.faults[VOL1] = ["403"] * 10
    links = s3.links_file(tmp_path)
    with pytest.raises(DownloadError, match="expired") as info:
        download_all(links, tmp_path / "raw", **FAST)
    message = str(info.value)
    assert "mapillary.com" in message and str(links) in message and VOL1 in message
    assert not info.value.retryable
    assert len(s3.asked_for(VOL1)) == 1
    _assert_secret_kept(caplog, capsys, info.value)


def test_404_is_clear_and_not_retried(
    s3: FakeS3, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    s3.faults[VOL1] = ["404"] * 10
    with pytest.raises(DownloadError, match="404 Not Found") as info:
        download_all(s3.links_file(tmp_path), tmp_path / "raw", **FAST)
    assert len(s3.asked_for(VOL1)) == 1
    _assert_secret_kept(caplog, capsys, info.value)


def test_file_missing_from_checksums_is_refused_up_front(
    s3: FakeS3, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    s3.files["msls_extra.zip"] = b"not vouched for"  # served, but not in the checksum file
    with pytest.raises(DownloadError, match=r"msls_extra\.zip not listed") as info:
        download_all(s3.links_file(tmp_path), tmp_path / "raw", **FAST)
    assert [name for name, _ in s3.requests] == [CHECKSUMS_NAME]  # nothing big fetched
    _assert_secret_kept(caplog, capsys, info.value)


def test_unreachable_server_gives_up_with_redacted_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{VOL1}{QUERY}"
    with pytest.raises(DownloadError, match="gave up after 4 attempts") as info:
        download_file(url, tmp_path / VOL1, expected_md5="0" * 32, **FAST)
    assert info.value.retryable
    assert f"127.0.0.1:{port}/{VOL1}" in str(info.value)
    _assert_secret_kept(caplog, capsys, info.value)


def test_present_file_with_wrong_md5_is_downloaded_again(s3: FakeS3, tmp_path: Path) -> None:
    dest = tmp_path / VOL1
    dest.write_bytes(b"stale")
    expected = hashlib.md5(s3.files[VOL1]).hexdigest()
    download_file(s3.url(VOL1), dest, expected_md5=expected, **FAST)
    assert dest.read_bytes() == s3.files[VOL1]


# --- choosing the source and the Prefect wrapper -----------------------------------------


def test_acquire_source_uses_a_directory_as_is(tmp_path: Path) -> None:
    assert acquire_source(str(tmp_path), tmp_path / "raw") == tmp_path
    assert not (tmp_path / "raw").exists()


def test_acquire_source_downloads_a_links_file(s3: FakeS3, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    assert acquire_source(str(s3.links_file(tmp_path)), raw) == raw
    assert (raw / VOL1).read_bytes() == s3.files[VOL1]


def test_acquire_source_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(SourceSpecError, match="not 'synthetic', a folder of MSLS zips"):
        acquire_source(str(tmp_path / "no-such-thing"), tmp_path / "raw")


def test_prefect_task_does_not_retry_expired_links() -> None:
    from prefect.states import Failed

    from tasks.download import download_task

    condition = download_task.retry_condition_fn
    assert download_task.retries == 2
    assert not condition(download_task, None, Failed(data=DownloadError("403", retryable=False)))
    assert condition(download_task, None, Failed(data=DownloadError("drops", retryable=True)))


@pytest.mark.slow
def test_prefect_step_fails_fast_and_quietly_on_expired_links(
    prefect_api,
    s3: FakeS3,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    from prefect import flow

    from tasks.download import download_task

    @flow
    def fetch(links: Path, raw: Path) -> list[Path]:
        return download_task(links, raw, **FAST)

    s3.faults[VOL1] = ["403"] * 10
    with pytest.raises(DownloadError, match="expired") as info:
        fetch(s3.links_file(tmp_path), tmp_path / "raw")
    assert len(s3.asked_for(VOL1)) == 1  # one request: neither we nor Prefect retried
    _assert_secret_kept(caplog, capsys, info.value)
