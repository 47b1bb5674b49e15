"""Learning-curve figures shared by the benchmark tools (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def figure(panels: int, width: float) -> tuple[Any, Any]:
    """A row of ``panels`` axes, drawn off-screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(width, 4.2))


def save(fig: Any, axes: Sequence[Any], titles: Sequence[str], xlabel: str, png: Path, dpi: int = 110) -> None:
    """Title and grid each panel, put the legend on the first, and write the PNG."""
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=dpi)
