"""Tar iteration: the samples of one shard, straight from its bytes.

Our shards are plain USTAR (shards/writer.py); this walks them ~20x faster than
`tarfile`, whose header parsing was most of a loader worker's time, and hands anything
else (pax headers, long GNU names) to `tarfile`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator

from shards.conditions import class_label, with_night

BAD_SHARD_ADVICE = "run `msls verify` and re-run `msls prepare` to rebuild it"


def read_shard(
    url: str, expected: int | None = None, condition: str = ""
) -> Iterator[tuple[str, memoryview, int]]:
    """(key, jpg bytes, label) of each sample of one tar, in stored order.

    The label is the city index, or under `condition` "city,night" the class
    2 * city + night (shards/conditions.py: the night flag is read from `<key>.json`).

    Raises ValueError naming the shard when it is missing, truncated or malformed. A tar
    cut at a member boundary reads as a shorter valid tar, so the count is checked
    against `expected` (dataset.json's) when given.
    """
    count = 0
    try:
        with open(url, "rb") as stream:
            data = bytearray(os.fstat(stream.fileno()).st_size)
            stream.readinto(data)
        key, fields = None, {}
        for name, payload in _tar_members(data):
            name, _, ext = name.rpartition("/")[2].partition(".")
            if name != key:
                if key is not None:
                    count += 1
                    yield _sample(key, fields, condition)
                key, fields = name, {}
            fields[ext] = payload
        if key is not None:
            count += 1
            yield _sample(key, fields, condition)
        if expected is not None and count != expected:
            raise tarfile.ReadError(f"{count} samples, dataset.json says {expected}")
    except (OSError, tarfile.TarError, KeyError, json.JSONDecodeError) as exc:
        detail = f"sample {exc.args[0]} lacks a member" if isinstance(exc, KeyError) else exc
        raise ValueError(f"{url}: unreadable shard ({detail}); {BAD_SHARD_ADVICE}") from exc


def _tar_members(data: bytearray) -> Iterator[tuple[str, memoryview]]:
    """(name, payload) of each regular file of an in-memory tar, payloads not copied.

    Our shards are plain USTAR (writer.py), which this walks ~20x faster than `tarfile`
    (its header parsing, not decoding, was most of a loader worker's time). Any other
    member type (pax headers, long GNU names) hands the archive to `tarfile`.
    """
    view, offset = memoryview(data), 0
    while offset + 512 <= len(data):
        header = data[offset : offset + 512]
        if header[:1] == b"\0":
            return  # the end-of-archive zero blocks
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0", b"5"):
            yield from _tarfile_members(data, offset)
            return
        size = int(header[124:136].rstrip(b" \0") or b"0", 8)
        start = offset + 512
        if start + size > len(data):
            raise tarfile.ReadError(f"{header[:100].rstrip(bytes(1)).decode()} is cut short")
        if header[156:157] != b"5":
            prefix = header[345:500].rstrip(b"\0").decode()
            name = header[:100].rstrip(b"\0").decode()
            yield (f"{prefix}/{name}" if prefix else name), view[start : start + size]
        offset = start + (size + 511) // 512 * 512
    if offset < len(data):
        raise tarfile.ReadError("the archive ends inside a header")


def _tarfile_members(data: bytearray, offset: int) -> Iterator[tuple[str, memoryview]]:
    with tarfile.open(fileobj=io.BytesIO(data[offset:]), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, memoryview(bytearray(tar.extractfile(member).read()))


def _sample(key: str, fields: dict[str, memoryview], condition: str) -> tuple[str, memoryview, int]:
    needed = ("jpg", "cls", "json") if with_night(condition) else ("jpg", "cls")
    if any(ext not in fields for ext in needed):
        raise KeyError(key)
    city = int(bytes(fields["cls"]))
    if not with_night(condition):
        return key, fields["jpg"], city
    night = bool(json.loads(bytes(fields["json"])).get("night", False))
    return key, fields["jpg"], class_label(city, night, condition)
