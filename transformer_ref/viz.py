"""Plotting helpers shared by the book's chapters, so no chapter repeats plotting code.

Every function accepts torch tensors or NumPy arrays, labels its axes, returns what it drew on
and never calls ``plt.show()`` (the notebook displays the figure). Figures are sized for a
phone-friendly page: at most ``MAX_WIDTH`` inches wide.

    from transformer_ref.viz import attention_heatmap, matrix_heatmap, plot_curves, attention_grid

Attention weights are drawn with queries as rows and keys as columns, the layout of the
``(..., T_q, T_k)`` weight tensors in ``transformer_ref.attention``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

MAX_WIDTH = 7.0
"""Widest figure (inches) the helpers make; wider figures shrink to unreadable text on a phone."""

_LABEL_LIMIT = 24   # tick labels are written out only up to this many rows/columns


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor, an array or a sequence of numbers; "
                        f"got {type(x).__name__}") from err


def _to_matrix(x: ArrayLike, name: str) -> np.ndarray:
    m = _to_numpy(x, name)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (rows, columns); got shape {m.shape}")
    return m


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.0,
               height: float | None = None) -> tuple[Figure, np.ndarray]:
    """A figure with a grid of axes, at most MAX_WIDTH inches wide.

    Returns (figure, axes) with axes always a 2-D array of shape (nrows, ncols).
    """
    if ncols < 1 or nrows < 1:
        raise ValueError(f"ncols and nrows must be >= 1; got ncols={ncols}, nrows={nrows}")
    width = min(width, MAX_WIDTH)
    if height is None:
        height = min(3.6, width / ncols * 0.85) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False,
                             layout="constrained")
    return fig, axes


def _check_labels(labels: Sequence[str] | None, n: int, name: str, what: str) -> None:
    if labels is not None and len(labels) != n:
        raise ValueError(f"{name} must have one label per {what} ({n}); got {len(labels)}")


def _tick_labels(ax: Axes, labels: Sequence[str] | None, n: int, axis: str) -> None:
    if labels is None or n > _LABEL_LIMIT:
        return
    if axis == "x":
        ax.set_xticks(range(n), [str(s) for s in labels], rotation=90 if n > 8 else 0)
    else:
        ax.set_yticks(range(n), [str(s) for s in labels])


def matrix_heatmap(matrix: ArrayLike, ax: Axes | None = None, *, title: str | None = None,
                   xlabel: str = "column", ylabel: str = "row", cmap: str | None = None,
                   centered: bool = False, vmin: float | None = None, vmax: float | None = None,
                   x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
                   colorbar: bool = True, colorbar_label: str | None = None) -> Axes:
    """Draw a 2-D matrix (rows, columns) as a heat map with labelled axes.

    centered=True uses a diverging colour map symmetric around 0 (for signed values such as
    positional encodings or weight matrices); otherwise a sequential one.
    Returns the axes drawn on.
    """
    m = _to_matrix(matrix, "matrix")
    _check_labels(x_labels, m.shape[1], "x_labels", "column")
    _check_labels(y_labels, m.shape[0], "y_labels", "row")
    if ax is None:
        _, axes = new_figure(width=5.0, height=4.0)
        ax = axes[0, 0]
    if centered:
        bound = float(np.nanmax(np.abs(m))) if vmin is None and vmax is None else None
        vmin = -bound if bound is not None else vmin
        vmax = bound if bound is not None else vmax
        cmap = cmap or "RdBu_r"
    image = ax.imshow(m, cmap=cmap or "viridis", vmin=vmin, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    _tick_labels(ax, x_labels, m.shape[1], "x")
    _tick_labels(ax, y_labels, m.shape[0], "y")
    if colorbar:
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.85)
        if colorbar_label:
            bar.set_label(colorbar_label)
    return ax


def attention_heatmap(weights: ArrayLike, ax: Axes | None = None, *,
                      query_labels: Sequence[str] | None = None,
                      key_labels: Sequence[str] | None = None, title: str | None = None,
                      xlabel: str = "key position", ylabel: str = "query position",
                      colorbar: bool = True) -> Axes:
    """Draw attention weights (T_q, T_k): row i is how query i spreads its attention over the keys.

    Colours run from 0 to 1 (weights are probabilities), so maps are comparable across figures.
    Returns the axes drawn on.
    """
    w = _to_matrix(weights, "weights")
    _check_labels(key_labels, w.shape[1], "key_labels", "key (column)")
    _check_labels(query_labels, w.shape[0], "query_labels", "query (row)")
    return matrix_heatmap(w, ax, title=title, xlabel=xlabel, ylabel=ylabel, cmap="Blues",
                          vmin=0.0, vmax=1.0, x_labels=key_labels, y_labels=query_labels,
                          colorbar=colorbar, colorbar_label="attention weight" if colorbar else None)


def attention_grid(weights: ArrayLike, *, query_labels: Sequence[str] | None = None,
                   key_labels: Sequence[str] | None = None, titles: Sequence[str] | None = None,
                   ncols: int = 4, suptitle: str | None = None,
                   xlabel: str = "key", ylabel: str = "query") -> Figure:
    """One attention heat map per head (or per layer): weights (H, T_q, T_k).

    Titles default to "head 0", "head 1", ...; a single colour bar (0 to 1) is shared.
    Returns the figure.
    """
    w = _to_numpy(weights, "weights")
    if w.ndim != 3:
        raise ValueError(f"weights must have shape (H, T_q, T_k) (3-D); got shape {w.shape}")
    heads = w.shape[0]
    _check_labels(key_labels, w.shape[2], "key_labels", "key")
    _check_labels(query_labels, w.shape[1], "query_labels", "query")
    if titles is not None and len(titles) != heads:
        raise ValueError(f"titles must have one entry per map ({heads}); got {len(titles)}")
    ncols = max(1, min(ncols, heads))
    nrows = math.ceil(heads / ncols)
    side = MAX_WIDTH / ncols
    fig, axes = new_figure(ncols, nrows, width=MAX_WIDTH, height=side * nrows + 0.4)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        attention_heatmap(w[h], ax, query_labels=query_labels, key_labels=key_labels,
                          title=titles[h] if titles is not None else f"head {h}",
                          xlabel=xlabel if h // ncols == nrows - 1 else "",
                          ylabel=ylabel if h % ncols == 0 else "", colorbar=False)
    fig.colorbar(axes.flat[0].images[0], ax=list(axes.flat), shrink=0.8, label="attention weight")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_curves(curves: Mapping[str, ArrayLike | tuple[ArrayLike, ArrayLike]],
                ax: Axes | None = None, *, xlabel: str, ylabel: str, title: str | None = None,
                logx: bool = False, logy: bool = False, markers: bool = False,
                legend_loc: str = "best") -> Axes:
    """Line plot of named curves: {label: y} (x = 0, 1, ...) or {label: (x, y)}.

    xlabel and ylabel are required: every figure in the book has labelled axes.
    Returns the axes drawn on.
    """
    if not curves:
        raise ValueError("curves must contain at least one {label: y} or {label: (x, y)} entry; got none")
    if ax is None:
        _, axes = new_figure(width=6.0, height=3.6)
        ax = axes[0, 0]
    xs = []
    for label, curve in curves.items():
        if isinstance(curve, tuple):
            if len(curve) != 2:
                raise ValueError(f"curves[{label!r}] must be y or a pair (x, y); got a tuple of {len(curve)}")
            x, y = _to_numpy(curve[0], f"curves[{label!r}][0]"), _to_numpy(curve[1], f"curves[{label!r}][1]")
        else:
            y = _to_numpy(curve, f"curves[{label!r}]")
            x = np.arange(len(y))
        if x.shape != y.shape or y.ndim != 1:
            raise ValueError(f"curves[{label!r}] must be 1-D with x and y of equal length; "
                             f"got x {x.shape} and y {y.shape}")
        ax.plot(x, y, label=str(label), marker="o" if markers else None, markersize=4)
        xs.append(x)
    if logx:
        ax.set_xscale("log")
        _label_powers_of_two(ax, np.unique(np.concatenate(xs)))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(loc=legend_loc, fontsize="small")
    return ax


def _label_powers_of_two(ax: Axes, values: np.ndarray) -> None:
    """On a log x axis whose points are all powers of two (lengths, depths, d_k), ticks with plain labels at
    the points (every other one past 8 points) instead of matplotlib's 10^k, which hide values like 8 and 16."""
    if not all(v >= 1 and float(v).is_integer() and int(v) & (int(v) - 1) == 0 for v in values):
        return
    ticks = values[::math.ceil(len(values) / 8)]
    ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_xticks([], minor=True)


def use_book_style() -> None:
    """Matplotlib settings every chapter uses: sharp PNGs of a phone-friendly size, readable text.

    Call once in a chapter's first code cell.
    """
    plt.rcParams.update({
        "figure.figsize": (6.0, 3.6),
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    })
