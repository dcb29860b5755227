"""DAG step: get the MSLS source onto disk (synthetic, a folder, or downloaded links)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from prefect import task

from shards.checksums import VERIFIED_RECORD, verify_listed
from shards.synthetic import SyntheticConfig, write_synthetic_source


class SourceSpecError(ValueError):
    """`--source` names nothing usable."""


def acquire_source(
    source: str, raw_dir: Path, synthetic: SyntheticConfig = SyntheticConfig()
) -> Path:
    """The folder holding the MSLS zips for `source`.

    "synthetic" is drawn into its own folder under `raw_dir` (named by its config, so
    sizes never mix and real downloads are never touched); a folder is used as it is;
    a file is a list of signed download links, fetched into `raw_dir`. A folder holding
    `msls_checksums.md5` has every file it lists checked first (once per file version:
    the record is kept in `raw_dir`), as a download would be; ChecksumError names a
    file that does not match.
    """
    if source == "synthetic":
        digest = hashlib.sha256(json.dumps(asdict(synthetic), sort_keys=True).encode()).hexdigest()
        target = Path(raw_dir) / f"synthetic-{digest[:10]}"
        write_synthetic_source(target, synthetic)
        return target
    path = Path(source).expanduser()
    if path.is_dir():
        verify_listed(path, Path(raw_dir) / VERIFIED_RECORD)
        return path
    if path.is_file():
        from tasks.download import download_all

        download_all(path, Path(raw_dir))
        return Path(raw_dir)
    raise SourceSpecError(
        f"--source {source}: not 'synthetic', a folder of MSLS zips, or a file of download links"
    )


def _worth_retrying(task_: object, task_run: object, state: object) -> bool:
    from tasks.download import worth_retrying

    return worth_retrying(task_, task_run, state)


acquire_source_task = task(
    name="acquire-source", retries=2, retry_delay_seconds=30, retry_condition_fn=_worth_retrying
)(acquire_source)
