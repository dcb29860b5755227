"""DAG step: download the MSLS distribution from the user's signed links.

Mapillary hands out S3-style links whose query strings are signatures that expire, so
they are secrets: every message passes a URL through `redact`, HTTP-library exceptions
are re-raised as our own with redacted text (and no chained original), and httpx's own
request logging is filtered. Nothing is trusted until its md5 matches: bytes land in
`<name>.part` (resumed with a Range request after a drop) and are renamed to `<name>`
only once the checksum file vouches for them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import logging
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
from prefect import task

from shards.atomic import atomic_path
from shards.checksums import (
    CHECKSUMS_NAME,
    VERIFIED_RECORD,
    ChecksumError,
    VerifiedFiles,
    md5_of,
    read_checksums,
)
from tasks.links import DownloadError, read_links, redact, scrub

log = logging.getLogger("msls.download")

EXPIRED_HINT = "ask for new links on the MSLS download page (mapillary.com) and update"
_MAX_WAIT_S = 120.0  # cap on one backoff sleep (and on a server's Retry-After)

Progress = Callable[[int, "int | None"], None]  # (bytes in the .part so far, total or None)


class _Transient(Exception):
    """One failed attempt worth retrying; the message is already redacted."""

    def __init__(self, message: str, wait_s: float | None = None, corrupt: bool = False) -> None:
        super().__init__(message)
        self.wait_s = wait_s  # the server's Retry-After, if it gave one
        self.corrupt = corrupt  # the bytes arrived but their md5 was wrong


# --- one file ------------------------------------------------------------------------


def download_file(
    url: str,
    dest: Path,
    *,
    expected_md5: str | None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: Progress | None = None,
    links_file: Path | None = None,
    verified: VerifiedFiles | None = None,
) -> Path:
    """Fetch `url` into `dest`, resuming `<dest>.part`, and return `dest`.

    `retries` extra attempts follow the first after drops, stalls (`timeout_s` is also
    the read timeout), 5xx, 429 and md5 mismatches, each after an exponential backoff
    with jitter. A `dest` already holding the right md5 is kept without any request; a
    file with no `expected_md5` (the checksum file itself) is kept if present and is
    never resumed, since nothing could vouch for the joined pieces. `links_file` only
    names the file to update in the message for an expired link. `verified` remembers
    what matched, so a re-run does not hash gigabytes again.
    """
    dest = Path(dest)
    if _already_done(dest, expected_md5, verified):
        return dest
    part = dest.with_name(dest.name + ".part")
    failure: _Transient | None = None
    attempts = max(0, retries) + 1
    for attempt in range(attempts):
        if attempt:
            time.sleep(_backoff(attempt, backoff_s, failure))
        if expected_md5 is None:
            part.unlink(missing_ok=True)
        try:
            digest = _fetch_once(url, part, timeout_s, progress, links_file)
        except _Transient as exc:
            failure = exc
            log.warning("%s: attempt %d/%d failed: %s", dest.name, attempt + 1, attempts, exc)
            continue
        if expected_md5 is None or digest.hexdigest() == expected_md5.lower():
            with atomic_path(dest) as tmp:
                os.replace(part, tmp)
            if verified is not None and expected_md5 is not None:
                verified.add(dest, expected_md5)
            log.info("%s: downloaded and verified", dest.name)
            return dest
        part.unlink(missing_ok=True)  # a bad byte anywhere: resuming would keep it
        failure = _Transient(f"md5 {digest.hexdigest()} is not {expected_md5}", corrupt=True)
        log.warning("%s: attempt %d/%d failed: %s", dest.name, attempt + 1, attempts, failure)
    raise _final_error(dest, url, failure, attempts)


def _already_done(dest: Path, expected_md5: str | None, verified: VerifiedFiles | None) -> bool:
    """True when `dest` exists and needs no download (re-running is a no-op)."""
    if not dest.is_file():
        return False
    if expected_md5 is None or (verified is not None and verified.matched(dest, expected_md5)):
        return True
    if md5_of(dest).hexdigest() == expected_md5.lower():
        if verified is not None:
            verified.add(dest, expected_md5)
        log.info("%s: already present and verified, skipped", dest.name)
        return True
    log.warning("%s: present but its md5 does not match; downloading it again", dest.name)
    dest.unlink()
    return False


def _final_error(dest: Path, url: str, failure: _Transient, attempts: int) -> DownloadError:
    if failure.corrupt:
        return DownloadError(
            f"{dest.name}: corrupt at the source ({redact(url)}): {failure} on the last of "
            f"{attempts} attempts; report it to Mapillary or try again later"
        )
    return DownloadError(
        f"{dest.name}: gave up after {attempts} attempts ({failure}) fetching {redact(url)}; "
        "check the network and run again (the download resumes)",
        retryable=True,
    )


def _backoff(attempt: int, backoff_s: float, failure: _Transient | None) -> float:
    """Exponential backoff with jitter on top, or the server's Retry-After if longer."""
    wait = backoff_s * 2 ** (attempt - 1) * (1 + random.random())
    asked = (failure.wait_s if failure else None) or 0.0
    return min(max(wait, asked), _MAX_WAIT_S)


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for all clients: building one costs ~60 ms, a client per attempt 0.3."""
    return httpx.create_ssl_context()


def _fetch_once(
    url: str, part: Path, timeout_s: float, progress: Progress | None, links_file: Path | None
) -> hashlib._Hash:
    """One GET appending to `part` (Range-resumed); the md5 of the whole part file.

    httpx errors carry the full URL, so each is turned into a redacted `_Transient` or
    `DownloadError` outside the `except` block: no chained original leaks the signature.
    """
    failure: Exception | None = None
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=True, verify=_tls()) as client:
            return _stream_into(client, url, part, progress, links_file)
    except httpx.TimeoutException as exc:
        failure = _Transient(f"timed out after {timeout_s:g} s ({type(exc).__name__})")
    except httpx.TransportError as exc:
        failure = _Transient(f"connection failed ({type(exc).__name__}: {scrub(str(exc))})")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        failure = DownloadError(
            f"{part.name[:-5]}: {type(exc).__name__} fetching {redact(url)}: {scrub(str(exc))}"
        )
    raise failure


def _stream_into(
    client: httpx.Client, url: str, part: Path, progress: Progress | None, links_file: Path | None
) -> hashlib._Hash:
    """Stream the response into `part`, hashing as it goes (the old part first, if resumed)."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: Range offsets and the md5 both refer to the bytes as stored
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 416 and offset:  # the part holds the whole file (or more)
            return md5_of(part)
        _check_status(response, part.name[:-5], url, links_file)
        if offset and not _resumes_at(response, offset):
            log.info("%s: server sent the whole file; starting over", part.name[:-5])
            offset = 0
        digest = md5_of(part) if offset else hashlib.md5(usedforsecurity=False)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        done = offset
        with open(part, "ab" if offset else "wb") as handle:
            for chunk in response.iter_raw():  # as they arrive: a drop keeps what came
                handle.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and done != total:
        raise _Transient(f"got {done} of {total} bytes")
    return digest


def _resumes_at(response: httpx.Response, offset: int) -> bool:
    """True when the server honoured our Range: 206 with content starting at `offset`."""
    content_range = response.headers.get("Content-Range", "")
    return response.status_code == 206 and content_range.startswith(f"bytes {offset}-")


def _check_status(response: httpx.Response, name: str, url: str, links_file: Path | None) -> None:
    """Raise for any answer but 200/206: `_Transient` where waiting may help."""
    status = response.status_code
    if status in (200, 206):
        return
    where = redact(url)
    if status == 429 or status >= 500:
        raise _Transient(f"HTTP {status} from the server", _retry_after(response))
    if status == 403:
        target = links_file or "your links file"
        raise DownloadError(
            f"{name}: HTTP 403 Forbidden from {where}: the signed link has probably expired; "
            f"{EXPIRED_HINT} {target}"
        )
    if status == 404:
        raise DownloadError(
            f"{name}: HTTP 404 Not Found at {where}: the link is wrong or the file was "
            f"removed; {EXPIRED_HINT} {links_file or 'your links file'}"
        )
    raise DownloadError(f"{name}: unexpected HTTP {status} from {where}")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


# --- the whole distribution ----------------------------------------------------------


def download_all(
    urls_file: Path,
    raw_dir: Path,
    *,
    workers: int = 4,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> list[Path]:
    """Download every link in `urls_file` into `raw_dir`, checksum file first.

    Every other file must be listed in the checksum file (refused up front otherwise)
    and is verified against it. Files download `workers` at a time; one failure does
    not stop the others (their bytes are kept for the next run), and the first error
    is raised once all have finished. Returns the paths in links-file order.
    """
    urls_file, raw_dir = Path(urls_file), Path(raw_dir)
    links = read_links(urls_file)
    raw_dir.mkdir(parents=True, exist_ok=True)
    options = {"retries": retries, "backoff_s": backoff_s, "timeout_s": timeout_s}
    sums_path = download_file(
        links[CHECKSUMS_NAME],
        raw_dir / CHECKSUMS_NAME,
        expected_md5=None,
        links_file=urls_file,
        **options,
    )
    sums = _checksums_for(links, sums_path, urls_file)
    names = [name for name in links if name != CHECKSUMS_NAME]
    verified = VerifiedFiles(raw_dir / VERIFIED_RECORD)
    stop = threading.Event()
    with _progress_reporters(names) as reporters, ThreadPoolExecutor(max(1, workers)) as pool:
        futures = {  # each thread in a copy of our context: its logs reach the flow run
            name: pool.submit(
                contextvars.copy_context().run,
                download_file,
                links[name],
                raw_dir / name,
                expected_md5=sums[name],
                progress=_stoppable(reporters[name], stop),
                links_file=urls_file,
                verified=verified,
                **options,
            )
            for name in names
        }
        try:
            wait(futures.values())
        except BaseException:  # Ctrl-C or a cancelled flow: stop the workers at their next chunk
            stop.set()
            for future in futures.values():
                future.cancel()  # queued files never start
            raise
    errors = [error for future in futures.values() if (error := future.exception())]
    for error in errors[1:]:
        log.error("%s", error)
    if errors:
        raise errors[0]
    return [sums_path] + [future.result() for future in futures.values()]


def _stoppable(report: Progress, stop: threading.Event) -> Progress:
    """`report`, but raising once `stop` is set: how a worker thread learns to quit."""

    def call(done: int, total: int | None) -> None:
        if stop.is_set():
            raise DownloadError("download interrupted; run again to resume")
        report(done, total)

    return call


def _checksums_for(links: dict[str, str], sums_path: Path, urls_file: Path) -> dict[str, str]:
    """The checksum table, refusing links it does not vouch for before any big download."""
    try:
        sums = read_checksums(sums_path)
    except ChecksumError as exc:
        sums_path.unlink(missing_ok=True)  # garbage (an error page?): fetch it afresh next time
        raise DownloadError(str(exc)) from None
    unlisted = [name for name in links if name != CHECKSUMS_NAME and name not in sums]
    if unlisted:
        raise DownloadError(
            f"{urls_file}: {', '.join(unlisted)} not listed in {sums_path}, so it cannot be "
            f"verified; remove that link, or delete {sums_path.name} if the distribution changed"
        )
    missing = sorted(set(sums) - set(links))
    if missing:
        log.warning("%s: no links for %s; downloading the rest", urls_file, ", ".join(missing))
    return sums


@contextlib.contextmanager
def _progress_reporters(names: list[str]) -> Iterator[dict[str, Progress]]:
    """Per-file progress callbacks: one rich bar per file in a terminal, log lines else."""
    if not sys.stderr.isatty():
        yield {name: _LogProgress(name) for name in names}
        return
    from rich.progress import DownloadColumn, TransferSpeedColumn
    from rich.progress import Progress as RichProgress

    columns = (*RichProgress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    with RichProgress(*columns, transient=True) as bar:
        yield {name: _bar_updater(bar, name) for name in names}


def _bar_updater(bar: object, name: str) -> Progress:
    task_id = bar.add_task(name, total=None)  # type: ignore[attr-defined]
    return lambda done, total: bar.update(task_id, completed=done, total=total)  # type: ignore


class _LogProgress:
    """Logs one line per ~10% of a file, for Prefect's logs and other non-terminals."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.next_tenth = 1

    def __call__(self, done: int, total: int | None) -> None:
        if not total or done * 10 < self.next_tenth * total:
            return
        self.next_tenth = done * 10 // total + 1
        log.info("%s: %d%% of %.1f MB", self.name, 100 * done // total, total / 1e6)


# --- Prefect wrappers: they take the links file path, never the URLs (no secret lands
# in recorded task parameters) --------------------------------------------------------


def worth_retrying(_task: object, _task_run: object, state: object) -> bool:
    """Prefect retries the step only where waiting may help: never for expired links."""
    # raise_on_failure=False hands back the exception without re-raising it here
    error = state.result(raise_on_failure=False)  # type: ignore[attr-defined]
    if isinstance(error, ChecksumError):  # the file on disk is wrong: waiting cannot help
        return False
    return not isinstance(error, DownloadError) or error.retryable


download_task = task(
    name="download", retries=2, retry_delay_seconds=30, retry_condition_fn=worth_retrying
)(download_all)
