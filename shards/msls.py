"""Reading the MSLS distribution as it is shipped: zips (or an extracted tree) and CSVs.

Images are read straight out of the zips by member name and never extracted, so a
hostile member name (`../x`, `/etc/passwd`) can never write anything, and the
distribution does not need twice its size on disk. Member names that do not match the
MSLS layout are ignored (and counted by the catalog).

Layout (DESIGN.md): `train_val/<city>/{query,database}/images/<key>.jpg` with
`seq_info.csv`, `raw.csv`, `postprocessed.csv`, `subtask_index.csv` per folder, whose
rows align by their unnamed first index column; `test/<city>/...` has only
`seq_info.csv` and `subtask_index.csv`. A patch zip (`msls_patch_*.zip`) overrides
older members of the same name.

Hostile archives (what each gets; tests/test_hostile_input.py):
- a symbolic-link member (Unix mode S_IFLNK in its external attributes) is never
  followed nor read as an image: `read_member` refuses it, so the catalog marks it
  corrupt ("symbolic link"). In an extracted tree, symlinked files are not listed.
- a name twice in one zip: `image_members` keeps the last entry (what
  `ZipFile.open` reads) and counts the copies; the catalog marks it duplicate and uses
  neither, since other unzip tools may pick the other one. A later archive (a patch)
  with one copy replaces both.
- a member declaring more than the caller's limit is refused before any byte is
  read; one declaring less than it holds is read only to its declared size and then
  fails its CRC. A damaged member (bad CRC, bad deflate data) is an OSError, never a
  crash (the catalog marks it corrupt), and at most `limit + 1` bytes of it are ever held.
- CSVs are read through the same bounded path (`MAX_CSV_BYTES`); a CSV that cannot be
  read or parsed costs its own columns, with a warning naming archive and member.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

IMAGE_MEMBER = re.compile(
    r"^(?P<subset>train_val|test)/(?P<city>[A-Za-z0-9_-]+)/(?P<folder>query|database)"
    r"/images/(?P<key>[A-Za-z0-9_-]+)\.jpg$"
)
CSV_MEMBER = re.compile(
    r"^(?P<subset>train_val|test)/(?P<city>[A-Za-z0-9_-]+)/(?P<folder>query|database)"
    r"/(?P<name>seq_info|raw|postprocessed|subtask_index)\.csv$"
)
CSV_NAMES = ("seq_info", "raw", "postprocessed", "subtask_index")
# The largest MSLS CSV is a few tens of MB; parsing holds ~5x its size in memory.
MAX_CSV_BYTES = 128 * 1024 * 1024
TREE = ""  # `archive` value of an image that lives in an extracted tree, not a zip


class SourceError(ValueError):
    """A source that cannot be read at all (as opposed to one bad image in it)."""


@dataclass(frozen=True)
class ImageMember:
    """Where one image's bytes live: a zip member, or a file in an extracted tree."""

    subset: str
    city: str
    folder: str
    key: str
    archive: str  # zip file name inside the source dir, or TREE
    member: str  # member name in the zip, or path relative to the source dir
    nbytes: int
    crc32: int  # zip CRC-32 (content identity without reading); 0 for tree files
    copies: int = 1  # entries of this name in its archive: more than one is ambiguous


@dataclass(frozen=True)
class CsvMember:
    """Where one metadata CSV lives: a zip member, or a file in an extracted tree."""

    archive: str  # zip file name inside the source dir, or TREE
    member: str  # member name in the zip, or path relative to the source dir

    def __str__(self) -> str:
        return f"{self.archive}:{self.member}" if self.archive else self.member


def _volume_order(path: Path) -> tuple[int, int, str]:
    """Image volumes in numeric order, patches last so their members win."""
    match = re.search(r"_(\d+)\.zip$", path.name)
    is_patch = path.name.startswith("msls_patch")
    return (1 if is_patch else 0, int(match.group(1)) if match else 0, path.name)


@dataclass(frozen=True)
class MslsSource:
    """A directory holding the MSLS zips, or the tree they extract to."""

    root: Path

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise SourceError(
                f"{self.root}: not a directory; pass the folder holding the MSLS zips"
            )
        if not self.image_archives() and not self._tree_folders():
            raise SourceError(
                f"{self.root}: no msls_images_vol_*.zip and no train_val/ or test/ folder; "
                "pass the folder holding the MSLS zips (or their extracted tree)"
            )

    def image_archives(self) -> list[Path]:
        """Image volumes then patch zips, in the order later ones override earlier ones."""
        zips = [*self.root.glob("msls_images_vol_*.zip"), *self.root.glob("msls_patch*.zip")]
        return sorted(zips, key=_volume_order)

    def metadata_archives(self) -> list[Path]:
        """The metadata zip, then patch zips (which may carry corrected CSVs)."""
        main = sorted(self.root.glob("msls_metadata*.zip"))
        return main + sorted(self.root.glob("msls_patch*.zip"), key=_volume_order)

    def _tree_folders(self) -> list[Path]:
        return [p for p in (self.root / "train_val", self.root / "test") if p.is_dir()]

    def image_members(self) -> tuple[dict[tuple[str, str, str, str], ImageMember], int]:
        """Every image by (subset, city, folder, key), later archives overriding earlier.

        Returns the images and the number of members ignored because their names do not
        follow the MSLS layout (directories are not counted). A name that occurs twice in
        one zip keeps its last entry, with `copies` saying how many there were.
        """
        found: dict[tuple[str, str, str, str], ImageMember] = {}
        ignored = 0
        for archive, infos in self._member_listings():
            copies = Counter(name for name, _, _ in infos)
            for name, nbytes, crc in infos:
                match = IMAGE_MEMBER.match(name)
                if match is None:
                    ignored += not name.endswith("/") and not name.endswith(".csv")
                    continue
                parts = match.group("subset", "city", "folder", "key")
                found[parts] = ImageMember(*parts, archive, name, nbytes, crc, copies[name])
        return found, ignored

    def _member_listings(self) -> Iterator[tuple[str, list[tuple[str, int, int]]]]:
        archives = self.image_archives()
        if not archives:
            files = (p for folder in self._tree_folders() for p in folder.rglob("*.jpg"))
            yield (
                TREE,
                [
                    (p.relative_to(self.root).as_posix(), p.stat().st_size, 0)
                    for p in files
                    if not p.is_symlink()
                ],
            )
            return
        for path in archives:
            with _open_zip(path) as zf:
                yield path.name, [(i.filename, i.file_size, i.CRC) for i in zf.infolist()]

    def csv_members(self) -> dict[tuple[str, str, str, str], CsvMember]:
        """Every CSV by (subset, city, folder, csv name); patch zips override.

        Only located here: `read_member(root, m.archive, m.member, MAX_CSV_BYTES)` reads
        one, so a damaged or oversized CSV fails alone, and one at a time is in memory.
        """
        found: dict[tuple[str, str, str, str], CsvMember] = {}
        archives = self.metadata_archives()
        if archives:
            names = [(path.name, info.filename) for path in archives for info in _infolist(path)]
        else:
            names = [
                (TREE, path.relative_to(self.root).as_posix())
                for folder in self._tree_folders()
                for path in folder.rglob("*.csv")
                if not path.is_symlink()
            ]
        for archive, name in names:
            match = CSV_MEMBER.match(name)
            if match:
                found[match.group("subset", "city", "folder", "name")] = CsvMember(archive, name)
        return found


def _infolist(path: Path) -> list[zipfile.ZipInfo]:
    with _open_zip(path) as zf:
        return zf.infolist()


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(
            f"{path}: not a readable zip ({exc}); delete it and download or copy it again"
        ) from None


def _zip_handle(path: Path) -> zipfile.ZipFile:
    """The open handle of `path` as it is now: an archive replaced in place is reopened."""
    stats = path.stat()
    return _cached_zip(str(path), stats.st_mtime_ns, stats.st_size)


@lru_cache(maxsize=16)
def _cached_zip(path: str, mtime_ns: int, size: int) -> zipfile.ZipFile:
    """One open handle per archive per process: reopening a 10 GB zip re-reads its directory."""
    return _open_zip(Path(path))


def read_member(root: Path, archive: str, member: str, limit: int) -> bytes:
    """The bytes of one image (or CSV), refusing members larger than `limit` bytes.

    Raises ValueError for a member over `limit` (declared, or found while reading) and
    OSError for one that is a symbolic link, damaged, or unreadable. At most `limit + 1`
    bytes are ever read, whatever the zip declares: a member declaring less than it
    holds is cut at its declared size and then fails its CRC.
    """
    if archive == TREE:
        with open(root / member, "rb") as handle:
            data = handle.read(limit + 1)
    else:
        zf = _zip_handle(root / archive)
        info = zf.getinfo(member)  # the last entry of a repeated name, as open() would
        if stat.S_ISLNK(info.external_attr >> 16):
            raise OSError("symbolic link in the archive; links are never followed")
        if info.file_size > limit:
            raise ValueError(f"declares {info.file_size} bytes, over the {limit}-byte limit")
        try:
            with zf.open(info) as handle:  # stops at the declared size, then checks the CRC
                data = handle.read(info.file_size + 1)
        # bad CRC or header, bad deflate data, truncated, encrypted, unknown compression
        except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, RuntimeError) as exc:
            raise OSError(f"{type(exc).__name__}: {exc}") from None
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return data


def read_csv(data: bytes) -> pa.Table:
    """Parse one MSLS CSV with every column as text; typing happens in the catalog.

    Reading as text first means a wrong-typed value costs that value, not the file.
    The unnamed first column (pandas' index) comes back named "index". A header that
    repeats a name is refused: which column a lookup of that name gets is undefined.
    """
    # non-UTF-8 bytes cost characters, not rows; a byte-order mark is not a column name
    text = data.decode("utf-8-sig", errors="replace")
    header = text.split("\n", 1)[0].rstrip("\r")
    names = [name.strip() or "index" for name in header.split(",")]
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        raise SourceError(f"header names {', '.join(repeated)} more than once")
    options = pacsv.ReadOptions(column_names=names, skip_rows=1)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
    try:
        return pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")), read_options=options, convert_options=convert
        )
    except pa.ArrowInvalid as exc:
        raise SourceError(f"unparseable CSV ({str(exc).splitlines()[0]})") from None
