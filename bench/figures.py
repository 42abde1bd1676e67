"""Figures on matplotlib's Agg canvas, written as reproducible PNGs.

No pyplot (no global state, no display needed), matplotlib's default style whatever the user's matplotlibrc says,
and no ``Software`` text in the file: the same figure gives the same bytes with the same matplotlib, so a
committed plot regenerates without a diff. A PNG may carry a ``Description`` (here: a digest of the plotted data)
that survives a matplotlib upgrade, which changes the pixels.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bench.results import write_atomically

DPI = 120


def new_figure(width: float, height: float) -> Any:
    """A figure of ``width`` x ``height`` inches on the Agg canvas, in matplotlib's default style."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, path: Path, description: str | None = None) -> Path:
    """Writes ``figure`` as a PNG, atomically (a reader never sees half a file) and without the matplotlib
    version, so that the same figure always gives the same bytes."""
    import matplotlib.style

    buffer = io.BytesIO()
    metadata = {"Software": None, **({"Description": description} if description else {})}
    with matplotlib.style.context("default"):
        figure.savefig(buffer, format="png", dpi=DPI, metadata=metadata)
    write_atomically(Path(path), buffer.getvalue())
    return Path(path)


def png_description(path: Path) -> str | None:
    """The ``Description`` text a PNG was saved with (:func:`save_png`), or None."""
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("Description")
