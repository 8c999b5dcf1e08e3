"""Preview contact sheet of a dataset's first samples: shaded | depth | canny | rgb, top AUs underneath.

It reads the dataset like any user would (tar members in the documented format, decoded with
`synth.records.codecs`), so `synth preview DIR` works on any synth dataset, finished or not, local or at
an object-store URL.
"""

import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from synth.errors import SynthError
from synth.records import codecs
from synth.records.storage import Store, is_url

log = logging.getLogger(__name__)

PANEL = 128  # side of each panel in pixels
TEXT_H = 30  # caption height under each tile
GAP = 6
PANELS = ("shaded", "depth", "canny", "rgb")
_WANTED = {"shaded.png", "depth.png", "canny.png", "rgb.jpg", "rgb_0.jpg", "au.npy", "meta.json"}


def iter_samples(dataset_dir: Path | str | Store, limit: int) -> Iterator[dict[str, Any]]:
    """The first `limit` samples (by shard order) as dicts of decoded members (those the preview uses)."""
    store = Store.of(dataset_dir)
    shards = [n for n in store.listing() if n.startswith("shard-") and n.endswith(".tar")]
    count = 0
    for shard in shards:
        current: dict[str, Any] = {}
        key = None
        with store.open(shard) as stream, tarfile.open(fileobj=stream) as tar:
            for member in tar:
                sample_key, _, suffix = Path(member.name).name.partition(".")
                if key is not None and sample_key != key:
                    yield current
                    count += 1
                    if count >= limit:
                        return
                    current = {}
                key = sample_key
                current["key"] = key
                if suffix in _WANTED:
                    current[suffix] = tar.extractfile(member).read()
        if key is not None:
            yield current
            count += 1
            if count >= limit:
                return


def _depth_vis(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres, 0 = bg -> uint8, near bright (as ControlNet depth), background black."""
    fg = depth > 0
    out = np.zeros(depth.shape, np.uint8)
    if fg.any():
        lo, hi = depth[fg].min(), depth[fg].max()
        out[fg] = (255 * (1.0 - (depth[fg] - lo) / max(hi - lo, 1e-6)) * 0.8 + 51).astype(np.uint8)
    return out


def _panel(image: np.ndarray | None) -> Image.Image:
    if image is None:
        return Image.new("RGB", (PANEL, PANEL), (40, 40, 40))
    mode = "L" if image.ndim == 2 else "RGB"
    return Image.fromarray(image, mode).convert("RGB").resize((PANEL, PANEL), Image.Resampling.BILINEAR)


def top_aus(au: np.ndarray, names: list[str], k: int = 3) -> str:
    """'AU12 0.83  AU6 0.41  AU25 0.30' for the k strongest AUs above 0.05 ('no AU' otherwise)."""
    order = np.argsort(-au, kind="stable")[:k]
    parts = [f"{names[i]} {au[i]:.2f}" for i in order if au[i] > 0.05]
    return "  ".join(parts) or "no AU > 0.05"


def au_names_of(dataset_dir: Path | str | Store, count: int) -> list[str]:
    store = Store.of(dataset_dir)
    for name in ("au_names.json", "manifest.json"):
        if store.exists(name):
            data = json.loads(store.read_bytes(name))
            return list(data if isinstance(data, list) else data["au_names"])
    return [f"AU#{i}" for i in range(count)]


def make_contact_sheet(dataset_dir: Path | str | Store, limit: int = 16, columns: int = 4) -> Image.Image:
    """The contact sheet image of the first `limit` samples of `dataset_dir`."""
    dataset_dir = Store.of(dataset_dir)
    samples = list(iter_samples(dataset_dir, limit))
    if not samples:
        raise SynthError(f"{dataset_dir}: no samples found (no shard-*.tar); is it a synth dataset?")
    font = ImageFont.load_default()
    tile_w, tile_h = len(PANELS) * PANEL, PANEL + TEXT_H
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (tile_w + GAP) + GAP, rows * (tile_h + GAP) + GAP), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    names: list[str] | None = None
    for n, sample in enumerate(samples):
        x0 = GAP + (n % columns) * (tile_w + GAP)
        y0 = GAP + (n // columns) * (tile_h + GAP)
        images = {
            "shaded": codecs.png8_to_gray(sample["shaded.png"]) if "shaded.png" in sample else None,
            "depth": _depth_vis(codecs.decode_depth(sample["depth.png"])) if "depth.png" in sample else None,
            "canny": codecs.png8_to_gray(sample["canny.png"]) if "canny.png" in sample else None,
            "rgb": None,
        }
        for rgb_name in ("rgb.jpg", "rgb_0.jpg"):
            if rgb_name in sample:
                images["rgb"] = codecs.jpeg_to_rgb(sample[rgb_name])
        for p, name in enumerate(PANELS):
            sheet.paste(_panel(images[name]), (x0 + p * PANEL, y0))
        au = codecs.decode_npy(sample["au.npy"]) if "au.npy" in sample else np.zeros(0, np.float32)
        names = names or au_names_of(dataset_dir, len(au))
        meta = codecs.decode_json(sample["meta.json"]) if "meta.json" in sample else {}
        caption = f"{sample['key']}  {meta.get('split', '?')}  {str(meta.get('expression', ''))[:40]}"
        draw.text((x0 + 2, y0 + PANEL + 2), caption, fill=(220, 220, 220), font=font)
        draw.text((x0 + 2, y0 + PANEL + 15), top_aus(au, names), fill=(255, 210, 120), font=font)
    return sheet


def write_preview(dataset_dir: str | Path | Store, out: str | Path, limit: int = 16) -> str:
    """Write the contact sheet PNG of `dataset_dir`'s first `limit` samples to `out` (a path or URL,
    written whole); returns `out`."""
    sheet = make_contact_sheet(dataset_dir, limit)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    parent, _, name = str(out).rpartition("/") if is_url(out) else (str(Path(out).parent), "", Path(out).name)
    Store.of(parent).write_bytes(name, buffer.getvalue())
    log.info("preview: %s", out)
    return str(out)
