"""The signed links file, and keeping its signatures out of sight.

Mapillary hands out S3-style links whose query strings are signatures that expire, so
they are secrets: every message passes a URL through `redact`, and httpx's own request
logging is filtered. The links file is checked up front, line by line, so a typo never
costs a partial multi-GB download.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from shards.checksums import CHECKSUMS_NAME


class DownloadError(ValueError):
    """One clear line: which file, what happened, what to do.

    `retryable` tells the Prefect wrapper whether trying the whole step again later could
    help (a flaky network) or not (an expired link, a corrupt file at the source).
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


# --- keeping signatures out of sight -------------------------------------------------

_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def redact(url: str) -> str:
    """`scheme://host/path` of `url`: the query string (signature) and userinfo dropped."""
    parts = urlsplit(str(url))
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def scrub(text: str) -> str:
    """`text` with every URL in it redacted (for messages from libraries)."""
    return _URL_RE.sub(lambda match: redact(match.group()), text)


class _RedactingFilter(logging.Filter):
    """Rewrites httpx/httpcore records so a signed URL never reaches a log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def _install_log_redaction() -> None:
    # httpx logs every request's full URL at INFO; Prefect and `-v` runs capture it.
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactingFilter) for f in logger.filters):
            logger.addFilter(_RedactingFilter())


_install_log_redaction()


def read_links(urls_file: Path) -> dict[str, str]:
    """Map file name (the basename of each link's path) to its signed link.

    Blank lines and `#` comments are skipped. Bad lines are refused up front, naming
    the line, so a typo never costs a partial multi-GB download.
    """
    urls_file = Path(urls_file)
    try:
        lines = urls_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DownloadError(f"{urls_file}: cannot read the links file ({exc})") from None
    links: dict[str, str] = {}
    seen_at: dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = _link_name(line)
        if name is None:
            raise DownloadError(
                f"{urls_file}:{lineno}: not an http(s) download link; "
                "put one link per line ('#' starts a comment)"
            )
        if name in links:
            raise DownloadError(
                f"{urls_file}:{lineno}: second link for {name} (first on line {seen_at[name]}); "
                "keep one link per file"
            )
        links[name], seen_at[name] = line, lineno
    if CHECKSUMS_NAME not in links:
        raise DownloadError(
            f"{urls_file}: no link to {CHECKSUMS_NAME}, which every other file is verified "
            "against; add it from the MSLS download page (mapillary.com)"
        )
    return links


def _link_name(line: str) -> str | None:
    """The file name a link downloads to, or None when the line is no usable link."""
    parts = urlsplit(line)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or " " in line:
        return None
    name = unquote(PurePosixPath(parts.path).name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        return None
    return name
