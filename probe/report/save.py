"""Saving matplotlib figures atomically, and file-name-safe labels. Every figure module uses it.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from probe import artifacts  # noqa: E402

FORMATS = ("png", "pdf")
DPI = 120


def save_figure(fig, stem: Path) -> Path:
    """Write stem.png and stem.pdf atomically and close the figure; returns the PNG path."""
    for fmt in FORMATS:
        with artifacts.atomic_path(stem.with_suffix(f".{fmt}")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=DPI)
    plt.close(fig)
    return stem.with_suffix(".png")


def save_figure_png(fig, path: Path, dpi: int = 150, bbox_inches: str | None = "tight"
                    ) -> Path:
    """Write one PNG of `fig` atomically and close the figure."""
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches=bbox_inches)
    plt.close(fig)
    return path


def slug(text) -> str:
    """File-name-safe text; '.' becomes 'p' so a suffix is never mistaken (sigma 0.1 -> 0p1)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text).replace(".", "p")).strip("-")
