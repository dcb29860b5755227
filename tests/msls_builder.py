"""Build tiny MSLS-format sources by hand, for tests that need exact control.

The synthetic source (shards/synthetic.py) makes realistic data; this makes odd data:
a zero-byte image, a truncated one, a member with no CSV row, a CSV row with no
member, a pixel bomb, a duplicate key across cities.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 90) -> bytes:
    """A real JPEG of smooth random colour (compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Row:
    """One seq_info row (and the matching raw/postprocessed rows)."""

    key: str
    sequence_key: str
    frame_number: int = 0
    pano: bool = False
    night: bool = False


@dataclass
class MslsBuilder:
    """Accumulates folders and members, then writes zips in the MSLS layout."""

    rows: dict[tuple[str, str, str], list[Row]] = field(default_factory=dict)
    members: dict[str, dict[str, bytes]] = field(
        default_factory=dict
    )  # zip name -> member -> bytes

    def image(
        self,
        city: str,
        row: Row,
        data: bytes | None = None,
        *,
        folder: str = "database",
        subset: str = "train_val",
        volume: str = "msls_images_vol_1.zip",
        csv: bool = True,
    ) -> None:
        """Add an image member (unless data is None) and, if `csv`, its metadata row."""
        if csv:
            self.rows.setdefault((subset, city, folder), []).append(row)
        if data is not None:
            name = f"{subset}/{city}/{folder}/images/{row.key}.jpg"
            self.members.setdefault(volume, {})[name] = data

    def sequence(
        self,
        city: str,
        sequence_key: str,
        n: int,
        *,
        seed: int = 0,
        size=(64, 48),
        night: bool = False,
    ) -> list[str]:
        """Add n good frames of one sequence (taken at night if `night`); returns their keys."""
        keys = []
        for frame in range(n):
            key = f"{city[:3]}{sequence_key}f{frame}"
            row = Row(key, sequence_key, frame, night=night)
            self.image(city, row, jpeg(*size, seed=seed + frame))
            keys.append(key)
        return keys

    def write(self, root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for volume, members in self.members.items():
            with zipfile.ZipFile(root / volume, "w", zipfile.ZIP_STORED) as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        with zipfile.ZipFile(root / "msls_metadata.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for (subset, city, folder), rows in self.rows.items():
                base = f"{subset}/{city}/{folder}"
                for name, text in _csvs(rows, subset).items():
                    zf.writestr(f"{base}/{name}.csv", text)
        return root


def _csvs(rows: list[Row], subset: str) -> dict[str, str]:
    seq = ",key,sequence_key,frame_number\n" + "".join(
        f"{i},{r.key},{r.sequence_key},{r.frame_number}\n" for i, r in enumerate(rows)
    )
    subtask = ",key,all\n" + "".join(f"{i},{r.key},True\n" for i, r in enumerate(rows))
    if subset == "test":
        return {"seq_info": seq, "subtask_index": subtask}
    raw = ",key,lon,lat,ca,captured_at,pano\n" + "".join(
        f"{i},{r.key},{10 + i / 1e4},{50 + i / 1e4},90.0,{1500000000000 + i},{r.pano}\n"
        for i, r in enumerate(rows)
    )
    post = ",key,utm,night,control_panel,view_direction,unique_cluster\n" + "".join(
        f'{i},{r.key},"[1.0, 2.0]",{r.night},False,Forward,{i}\n' for i, r in enumerate(rows)
    )
    return {"seq_info": seq, "raw": raw, "postprocessed": post, "subtask_index": subtask}


def two_city_source(root: Path, sequences: int = 12, size: tuple[int, int] = (320, 240)) -> Path:
    """`sequences` three-frame sequences alternating austin and paris, written to `root`."""
    b = MslsBuilder()
    for s in range(sequences):
        b.sequence(("austin", "paris")[s % 2], f"s{s}", 3, seed=s, size=size)
    return b.write(root)
