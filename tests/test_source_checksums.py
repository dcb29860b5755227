"""A source folder filled by hand is held to its msls_checksums.md5, as a download is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shards.checksums
from flows.cli import app
from shards.checksums import CHECKSUMS_NAME, ChecksumError
from shards.layout import DataLayout
from tasks.download import worth_retrying
from tasks.source import VERIFIED_RECORD, acquire_source
from tests.msls_builder import two_city_source

VOLUME = "msls_images_vol_1.zip"


def _with_checksums(src: Path) -> Path:
    lines = [
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(src.glob("*.zip"))
    ]
    (src / CHECKSUMS_NAME).write_text("".join(lines) + "0" * 32 + "  msls_images_vol_9.zip\n")
    return src


def _damage(path: Path) -> None:
    """One byte flipped in the middle: same size, as a bad copy or a bit flip leaves it."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files md5_of reads, in order (the real function does the work)."""
    seen: list[str] = []
    real = shards.checksums.md5_of

    def counting(path, advance=None):
        seen.append(Path(path).name)
        return real(path, advance)

    monkeypatch.setattr(shards.checksums, "md5_of", counting)
    return seen


def test_a_matching_folder_is_verified_once(tmp_path, hashed):
    src = _with_checksums(two_city_source(tmp_path / "src", sequences=4))
    raw = tmp_path / "data" / "raw"
    assert acquire_source(str(src), raw) == src
    assert sorted(hashed) == ["msls_images_vol_1.zip", "msls_metadata.zip"]  # absent vol_9: left
    assert (raw / VERIFIED_RECORD).is_file()
    hashed.clear()
    acquire_source(str(src), raw)
    assert hashed == []  # a re-run reads no byte of the volumes
    os.utime(src / VOLUME, ns=(1, 1))  # touched (copied again, say): checked again
    acquire_source(str(src), raw)
    assert hashed == [VOLUME]


def test_a_damaged_volume_is_named_in_one_line(tmp_path):
    src = _with_checksums(two_city_source(tmp_path / "src", sequences=4))
    _damage(src / VOLUME)
    with pytest.raises(ChecksumError) as error:
        acquire_source(str(src), tmp_path / "raw")
    message = str(error.value)
    assert message.startswith(f"{src / VOLUME}: md5 ") and "download it again" in message
    assert "\n" not in message


def test_a_volume_damaged_after_it_was_verified_is_caught(tmp_path):
    src = _with_checksums(two_city_source(tmp_path / "src", sequences=4))
    acquire_source(str(src), tmp_path / "raw")
    _damage(src / VOLUME)  # rewritten: a new mtime
    with pytest.raises(ChecksumError, match=VOLUME):
        acquire_source(str(src), tmp_path / "raw")


def test_a_folder_without_a_checksum_file_is_used_as_it_is(tmp_path, hashed):
    src = two_city_source(tmp_path / "src", sequences=4)
    assert acquire_source(str(src), tmp_path / "raw") == src
    assert hashed == []


def test_a_garbage_checksum_file_is_refused_by_line(tmp_path):
    src = two_city_source(tmp_path / "src", sequences=4)
    (src / CHECKSUMS_NAME).write_text("<html>Access Denied</html>\n")
    with pytest.raises(ChecksumError, match=rf"{CHECKSUMS_NAME}:1: not an md5sum line"):
        acquire_source(str(src), tmp_path / "raw")


def test_prefect_does_not_retry_a_checksum_mismatch():
    from prefect.states import Failed

    assert not worth_retrying(None, None, Failed(data=ChecksumError("x: md5 ...")))


@pytest.mark.slow
def test_cli_prepare_stops_before_building_anything(prefect_api, tmp_path):
    src = _with_checksums(two_city_source(tmp_path / "src", sequences=4))
    _damage(src / VOLUME)
    root = tmp_path / "data"
    args = ["--data-root", str(root), "prepare", "--source", str(src), "--shard-size", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {src / VOLUME}: md5 ") and "download it again" in line
    layout = DataLayout.at(root)
    assert not layout.latest_pointer.exists() and not list(layout.catalog.glob("*.parquet"))
