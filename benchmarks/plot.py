"""The bar chart of RESULTS.md: save and restore bandwidths beside the disk's limits (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render straight to a file

import matplotlib.pyplot as plt
from _harness import Record, Results

# (record id, state) pairs drawn in each panel, top to bottom. Lazy loads (safetensors.torch
# memory-maps) read nothing and are left out.
SAVES = [
    ("raw_write", "bytes"),
    ("torch_save", "torch"),
    ("safetensors_save", "torch"),
    ("ckpt_tree_save", "torch"),
    ("ckpt_torch_save", "torch"),
    ("ckpt_tree_async_total", "torch"),
    ("ckpt_torch_async_total", "torch"),
    ("safetensors_save", "numpy"),
    ("ckpt_tree_save", "numpy"),
    ("ckpt_tree_async_total", "numpy"),
    ("orbax_save", "jax"),
    ("orbax_async_total", "jax"),
    ("ckpt_tree_save", "jax"),
    ("ckpt_tree_async_total", "jax"),
    ("lightning_save", "lightning"),
    ("ckpt_torch_save", "lightning"),
]
RESTORES = [
    ("raw_read", "bytes"),
    ("torch_load", "torch"),
    ("ckpt_tree_restore", "torch"),
    ("ckpt_torch_restore", "torch"),
    ("safetensors_load", "numpy"),
    ("ckpt_tree_restore", "numpy"),
    ("ckpt_tree_restore", "jax"),
]
COLORS = {"limit": "#9e9e9e", "peer": "#5b8cc0", "ckpt-core": "#e07b39"}


def _kind(record: Record) -> str:
    if record.state == "bytes":
        return "limit"
    return "ckpt-core" if record.id.startswith("ckpt_") else "peer"


def _panel(ax: plt.Axes, records: list[Record], title: str) -> None:
    labels = [r.label if r.state == "bytes" else f"{r.state}: {r.label}" for r in records]
    values = [r.gb_per_s or 0.0 for r in records]
    bars = ax.barh(range(len(records)), values, color=[COLORS[_kind(r)] for r in records])
    ax.set_yticks(range(len(records)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xlabel("GB/s (median; higher is better)")
    ax.set_title(title, fontsize=10)
    if records and records[0].state == "bytes":  # the physical limit, as a line across
        ax.axvline(values[0], color=COLORS["limit"], linestyle="--", linewidth=1)
    ax.margins(x=0.15)


def plot_results(results: Results, mb: int, out: Path) -> None:
    """Draw the save and restore bandwidths at size `mb` into `out`."""
    panels = []
    for title, wanted in (
        (f"Durable saves, {mb} MiB (async: until committed)", SAVES),
        (f"Restores, {mb} MiB (warm page cache; ckpt-core verifies checksums)", RESTORES),
    ):
        records = [r for id, state in wanted if (r := results.get(id, state, mb)) is not None]
        if records:
            panels.append((title, records))
    heights = [0.32 * len(records) + 1.0 for _, records in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, sum(heights)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (title, records) in zip(axes[:, 0], panels):
        _panel(ax, records, title)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(handles, list(COLORS), loc="lower right", fontsize=8, ncols=3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
