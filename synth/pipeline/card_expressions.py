"""The dataset card's expression section: how the AU labels compare with the expression prior's targets.

Four figures under `card/`, built from the Parquet index, the manifest and the shards like a user would:
- `aus_per_sample.png`: histogram of active AUs (> 0.1) per sample, as FACS units and as AU columns;
- `base_rates.png`: each unit's share of samples against the configured target (the prior's data file);
- `cooccurrence.png`: P(unit b active | unit a active) over the units, a heat map;
- `prototypes.png`: a row of example faces (shaded renders) per prototype of the prior.
The targets come from the run's `sampler.prior` config and the units the model can make (its catalogue
single-AU expressions, read from the model's `model.json` when the model directory is still there).
"""

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.labels.expression_prior import ACTIVE, ExpressionPrior, ExpressionPriorConfig
from synth.labels.expressions import load_catalogue
from synth.records.storage import Store

log = logging.getLogger(__name__)

EXAMPLES_PER_PROTOTYPE = 6


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    _plt().close(fig)
    return buf.getvalue()


def _available(manifest: dict[str, Any], au_names: list[str]) -> np.ndarray | None:
    """(A,) bool columns the model makes from an AU vector, from its model.json; None when unknown."""
    path = Path(manifest["model"].get("path", "")) / "model.json"
    try:
        model_expressions = set(json.loads(path.read_text())["expression_names"])
    except (OSError, ValueError, KeyError):
        return None
    catalogue = load_catalogue()
    singles = {}
    for row, aus in enumerate(catalogue.expression_aus):
        if np.count_nonzero(aus) == 1:
            singles.setdefault(catalogue.au_names[int(np.argmax(aus))], catalogue.expression_names[row])
    return np.array([singles.get(n) in model_expressions for n in au_names])


def _prior(manifest: dict[str, Any], au_names: list[str]) -> ExpressionPrior | None:
    cfg = manifest["config"].get("sampler", {}).get("prior")
    if cfg is None:
        return None
    try:
        return ExpressionPrior(ExpressionPriorConfig(**cfg), au_names, _available(manifest, au_names))
    except (TypeError, ValueError) as err:  # a config from another version, or AU names outside the catalogue
        log.info("card: no expression prior targets (%s)", err)
        return None


def _histogram(units: np.ndarray | None, columns: np.ndarray) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4), dpi=100)
    top = int(max(columns.max(initial=0), 1))
    bins = np.arange(top + 2) - 0.5
    if units is not None:
        ax.hist(units, bins=bins, alpha=0.7, label="FACS units (bilateral AU = 1)", color="#4477aa")
    ax.hist(columns, bins=bins, alpha=0.5, label="AU columns (left/right apart)", color="#ee6677")
    ax.set_xlabel(f"active AUs per sample (intensity > {ACTIVE})")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _png(fig)


def _base_rates(units: tuple[str, ...], rates: np.ndarray, targets: np.ndarray) -> bytes:
    plt = _plt()
    order = np.argsort(-targets)
    x = np.arange(len(units))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(units) + 2), 3.6), dpi=100)
    ax.bar(x - 0.2, rates[order], width=0.4, label="dataset", color="#4477aa")
    ax.bar(x + 0.2, targets[order], width=0.4, label="configured target", color="#bbbbbb")
    ax.set_xticks(x, [units[i] for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("share of samples with the AU active")
    ax.legend(fontsize=8)
    return _png(fig)


def _cooccurrence(units: tuple[str, ...], active: np.ndarray) -> bytes:
    plt = _plt()
    count = active.sum(axis=0).astype(np.float64)  # (U,)
    joint = active.T.astype(np.float64) @ active.astype(np.float64)  # (U, U)
    cond = np.divide(joint, count[:, None], out=np.zeros_like(joint), where=count[:, None] > 0)
    fig, ax = plt.subplots(figsize=(0.22 * len(units) + 2.5, 0.22 * len(units) + 1.5), dpi=100)
    im = ax.imshow(cond, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(units)), units, rotation=90, fontsize=6)
    ax.set_yticks(range(len(units)), units, fontsize=6)
    ax.set_xlabel("b")
    ax.set_ylabel("a")
    ax.set_title("P(b active | a active)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _png(fig)


def _examples(root: Store, table: Any, names: tuple[str, ...]) -> bytes | None:
    """A row of shaded renders per prototype name (None when no sample has a shaded render)."""
    from PIL import Image

    keys = table.column("key").to_pylist()
    shards = table.column("shard").to_pylist()
    labels = table.column("expression").to_pylist()
    wanted: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    for key, shard, label in zip(keys, shards, labels, strict=True):
        if label in wanted and len(wanted[label]) < EXAMPLES_PER_PROTOTYPE:
            wanted[label].append((shard, key))
    images: dict[tuple[str, str], np.ndarray] = {}
    by_shard: dict[str, set[str]] = {}
    for rows in wanted.values():
        for shard, key in rows:
            by_shard.setdefault(shard, set()).add(f"{key}.shaded.png")
    for shard, members in by_shard.items():
        with tarfile.open(fileobj=io.BytesIO(root.read_bytes(shard))) as tar:
            for member in tar:
                if member.name in members:
                    data = tar.extractfile(member).read()
                    images[(shard, member.name.split(".")[0])] = np.asarray(Image.open(io.BytesIO(data)))
    rows = [n for n in names if wanted[n]]
    if not images or not rows:
        return None
    plt = _plt()
    size = (1.3 * EXAMPLES_PER_PROTOTYPE + 1, 1.35 * len(rows))
    fig, axes = plt.subplots(len(rows), EXAMPLES_PER_PROTOTYPE, figsize=size, dpi=100)
    axes = np.atleast_2d(axes)
    for r, name in enumerate(rows):
        for c in range(EXAMPLES_PER_PROTOTYPE):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if c < len(wanted[name]) and wanted[name][c] in images:
                ax.imshow(images[wanted[name][c]], cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    return _png(fig)


def expression_section(root: Store, manifest: dict[str, Any], card_dir: str) -> list[str]:
    """Write the four figures under `root/card_dir` (a directory or URL) and return the card's markdown."""
    columns = ["key", "shard", "expression", "au"]
    parts = [io.BytesIO(root.read_bytes(s["index_part"])) for s in manifest["shards"]]
    table = pa.concat_tables(pq.read_table(part, columns=columns) for part in parts)
    au_names = list(manifest["au_names"])
    au = np.asarray(table.column("au").to_pylist(), dtype=np.float32).reshape(len(table), len(au_names))
    prior = _prior(manifest, au_names)
    per_sample = (au > ACTIVE).sum(axis=1)
    lines = ["## Expressions against the expression prior", ""]
    if prior is None:
        root.write_bytes(f"{card_dir}/aus_per_sample.png", _histogram(None, per_sample))
        return [*lines, "![AUs per sample](card/aus_per_sample.png)", ""]
    active = prior.unit_activity(au)
    summary = prior.summary(au)
    root.write_bytes(f"{card_dir}/aus_per_sample.png", _histogram(active.sum(axis=1), per_sample))
    rates = active.mean(axis=0)
    root.write_bytes(f"{card_dir}/base_rates.png", _base_rates(prior.units, rates, prior.targets))
    root.write_bytes(f"{card_dir}/cooccurrence.png", _cooccurrence(prior.units, active))
    examples = _examples(root, table, prior.prototype_names)
    if examples is not None:
        root.write_bytes(f"{card_dir}/prototypes.png", examples)
    lines += [
        "Targets: `synth/labels/data/expression_prior.json` (base rates from DISFA and BP4D, prototypes from "
        "EMFACS and Baby FACS; see docs/expression-prior.md) with this run's `sampler.prior` overrides. "
        "Samples of other samplers are measured against the same targets.",
        "",
        f"- active AUs per sample (> {ACTIVE}): median {summary['median_active_units']:g} FACS units, "
        f"{summary['median_active_columns']:g} AU columns",
        f"- neutral faces: {summary['neutral_share']:.1%} (target {summary['neutral_target']:.1%})",
        f"- samples with an exclusive pair both active: {summary['exclusive_violations']}",
        f"- AU values at the clip limits (>= 1 or < 0): {summary['clipped_share']:.2%}",
        "",
        "![AUs per sample](card/aus_per_sample.png)",
        "",
        "![base rates](card/base_rates.png)",
        "",
        "![co-occurrence](card/cooccurrence.png)",
        "",
        *(["![prototypes](card/prototypes.png)", ""] if examples is not None else []),
        "| unit | share of samples | target | ratio |",
        "|---|---|---|---|",
        *[
            f"| {u} | {r:.3f} | {t:.3f} | {r / t:.2f} |" if t > 0 else f"| {u} | {r:.3f} | {t:.3f} | - |"
            for u, r, t in zip(prior.units, rates, prior.targets, strict=True)
        ],
        "",
    ]
    return lines
