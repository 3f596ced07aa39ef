"""Plots as inline SVG strings (matplotlib, Agg/SVG backends, no files, no network).

Every function returns an ``<svg>`` string ready to be placed in the page, or ``None`` when
there is nothing to draw (the page then says why). Text stays text (``svg.fonttype=none``),
ids are prefixed per figure so several SVGs can share one page, and the width/height
attributes are dropped so CSS scales the plot to the window.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib

if TYPE_CHECKING:
    from caprobe.comparison.rows import AggregateRow
    from caprobe.reporting.records import VariantRow

matplotlib.use("Agg", force=False)

ANNOTATE_MAX = 6  # more points than this: a legend instead of labels next to the points
BASELINE_GREYS = ["#4c4c4c", "#9a9a9a", "#262626", "#bdbdbd"]
PALETTE = ["#4c4c4c", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
           "#e377c2", "#17becf", "#bcbd22"]

_ID = re.compile(r'\bid="([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")
_HREF = re.compile(r'href="#([^"]+)"')


def _mpl_version() -> tuple[int, int]:
    major, minor = matplotlib.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def text(value) -> str:
    """A user string for matplotlib: ``$`` would start mathtext (and can raise), so escape it."""
    return str(value).replace("$", r"\$")


def color(i: int) -> str:
    """Colour ``i``: 0 is the baseline's grey, the others cycle through the rest."""
    return PALETTE[0] if i <= 0 else PALETTE[1 + (i - 1) % (len(PALETTE) - 1)]


def _rc():
    return {
        "svg.fonttype": "none",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "figure.dpi": 100,
    }


def to_svg(fig, prefix: str) -> str:
    """Serialize ``fig`` to an inline ``<svg>``: no XML prolog, ids prefixed, scalable."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": prefix, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", text)
    text = _HREF.sub(lambda m: f'href="#{prefix}-{m.group(1)}"', text)
    head, rest = text.split(">", 1)
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    return f'{head} class="plot" role="img" preserveAspectRatio="xMidYMid meet">{rest}'


def _figure(w: float = 6.4, h: float = 3.6):
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(_rc()):
        fig, ax = plt.subplots(figsize=(w, h))
    return fig, ax


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower or equal cost (x) and higher or
    equal accuracy (y), one of them strictly. Sorted by cost."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: (points[i][0], -points[i][1]))


def _ok(*values: Any) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v)
               for v in values)


def accuracy_vs_cost(rows: list[VariantRow], *, cost: Callable[[AggregateRow], float | None],
                     xlabel: str, prefix: str, xscale: float = 1.0,
                     xerr: Callable[[AggregateRow], float | None] | None = None) -> str | None:
    """Scatter of top-1 (mean, CI bars) against a cost of each row (``cost``; ``xerr`` the
    width of its horizontal bar); the Pareto front marked."""
    pts = [r for r in rows if _ok(cost(r.agg), r.agg.top1_mean)]
    if not pts:
        return None
    with matplotlib.rc_context(_rc()):
        fig, ax = _figure()
        xy = [(cost(r.agg) * xscale, r.agg.top1_mean) for r in pts]
        front = pareto_front(xy)
        if len(front) > 1:
            fx, fy = zip(*(xy[i] for i in front), strict=True)
            ax.plot(fx, fy, "--", color="#999999", lw=1, zorder=1, label="Pareto front")
        for r, (x, y), i in zip(pts, xy, range(len(pts)), strict=True):
            lo, hi = r.agg.top1_ci_low, r.agg.top1_ci_high
            yerr = [[y - lo], [hi - y]] if _ok(lo, hi) else None
            width = xerr(r.agg) if xerr else None
            xe = [[width * xscale / 2], [width * xscale / 2]] if _ok(width) else None
            ax.errorbar([x], [y], yerr=yerr, xerr=xe, fmt="o", color=r.color,
                        ms=7 if i in front else 5, mfc=None if i in front else "white",
                        capsize=3, zorder=3)
            if len(pts) <= ANNOTATE_MAX:
                ax.annotate(text(r.label), (x, y), textcoords="offset points",
                            xytext=(6, 5), fontsize=8)
            else:  # many points: name them in a legend instead of colliding labels
                ax.plot([], [], "o", color=r.color, label=text(r.label))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        if len(pts) > ANNOTATE_MAX:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        elif len(front) > 1:
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.margins(x=0.15, y=0.15)
        return to_svg(fig, prefix)


def training_curves(series: list[dict], *, prefix: str) -> str | None:
    """Per variant, mean over seeds per epoch with a min..max band; one panel per metric.

    ``series``: ``{"label", "color", "metrics": {name: {"x": [...], "mean": [...],
    "lo": [...], "hi": [...]}}}``.
    """
    names: list[str] = []
    for s in series:
        for name in s["metrics"]:
            if name not in names:
                names.append(name)
    if not names:
        return None
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(_rc()):
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            for s in series:
                m = s["metrics"].get(name)
                if not m:
                    continue
                ax.plot(m["x"], m["mean"], marker="o", ms=3, color=s["color"],
                        label=text(s["label"]))
                if any(lo != hi for lo, hi in zip(m["lo"], m["hi"], strict=True)):
                    ax.fill_between(m["x"], m["lo"], m["hi"], color=s["color"], alpha=0.15,
                                    lw=0)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("epoch")
        axes[0][0].legend(fontsize=7, frameon=False)
        fig.tight_layout()
        return to_svg(fig, prefix)


def latency_distributions(rows: list[dict], *, prefix: str) -> str | None:
    """Horizontal box plots of every variant's latency samples (ms per batch)."""
    rows = [r for r in rows if r.get("samples")]
    if not rows:
        return None
    with matplotlib.rc_context(_rc()):
        fig, ax = _figure(6.4, 0.5 + 0.45 * len(rows))
        data = [r["samples"] for r in rows][::-1]
        kw = ({"orientation": "horizontal"} if _mpl_version() >= (3, 10) else {"vert": False})
        bp = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=True,
                        flierprops={"markersize": 2}, **kw)
        for patch, r in zip(bp["boxes"], rows[::-1], strict=True):
            patch.set_facecolor(r["_color"])
            patch.set_alpha(0.35)
        ax.set_yticks(range(1, len(rows) + 1), [text(r["_label"]) for r in rows][::-1])
        ax.set_xlabel("latency (ms per batch)")
        return to_svg(fig, prefix)


def stage_madds(stages: list[str], rows: list[dict], *, prefix: str) -> str | None:
    """Grouped bars: multiply-adds inside attention modules per stage and variant."""
    rows = [r for r in rows if any(v for v in r["values"])]
    if not rows or not stages:
        return None
    with matplotlib.rc_context(_rc()):
        fig, ax = _figure(6.4, 3.2)
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(stages))]
            ax.bar(xs, [v / 1e3 for v in r["values"]], width=width, color=r["_color"],
                   label=text(r["_label"]))
        ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
        ax.set_ylabel("attention MAdds (thousands)")
        ax.legend(fontsize=7, frameon=False)
        return to_svg(fig, prefix)


def trend(series: list[dict], *, ylabel: str, prefix: str) -> str | None:
    """Lines over nightly dates: ``{"label", "color", "x": [dates], "y": [values]}``."""
    series = [s for s in series if any(_ok(y) for y in s["y"])]
    if not series:
        return None
    with matplotlib.rc_context(_rc()):
        fig, ax = _figure(6.4, 3.2)
        for s in series:
            pts = [(x, y) for x, y in zip(s["x"], s["y"], strict=True) if _ok(y)]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                    color=s["color"], label=text(s["label"]))
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7, frameon=False, ncol=2)
        return to_svg(fig, prefix)


def attention_maps(images: list, classes: list, blocks: list[dict], *,
                   prefix: str) -> str | None:
    """One row per fixed test image: the image, then each chosen block's gates.

    CA: the mean gate g^h·g^w as a heatmap with g^h (left strip) and g^w (top strip);
    CBAM: the spatial map with the channel weights as a strip on top; SE: the channel
    weights as a strip.
    """
    if not images or not blocks:
        return None
    import matplotlib.pyplot as plt
    import numpy as np
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    n, k = len(images), len(blocks)
    no_spines = {f"axes.spines.{side}": False for side in ("left", "right", "top", "bottom")}
    with matplotlib.rc_context(_rc() | no_spines | {"axes.grid": False}):
        fig, axes = plt.subplots(n, k + 1, figsize=(1.9 * (k + 1), 1.9 * n), squeeze=False)
        for i in range(n):
            ax = axes[i][0]
            ax.imshow(np.asarray(images[i], dtype=np.uint8), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if classes and i < len(classes) and classes[i] is not None:
                ax.set_ylabel(text(classes[i]), fontsize=7)
            if i == 0:
                ax.set_title("image", fontsize=8)
            for j, block in enumerate(blocks):
                ax = axes[i][j + 1]
                g = block["gates"]
                ax.set_xticks([])
                ax.set_yticks([])
                div = make_axes_locatable(ax)
                title_ax = ax
                if "hw" in g:
                    ax.imshow(np.asarray(g["hw"][i]), cmap="viridis", interpolation="nearest")
                    left = div.append_axes("left", size="12%", pad=0.03)
                    left.imshow(np.asarray(g["h"][i])[:, None], cmap="viridis", aspect="auto")
                    top = div.append_axes("top", size="12%", pad=0.03)
                    top.imshow(np.asarray(g["w"][i])[None, :], cmap="viridis", aspect="auto")
                    for extra in (left, top):
                        extra.set_xticks([])
                        extra.set_yticks([])
                    title_ax = top
                    kind = "g^h·g^w"
                elif "h" in g or "w" in g:
                    key = "h" if "h" in g else "w"
                    vec = np.asarray(g[key][i])
                    ax.imshow(vec[:, None] if key == "h" else vec[None, :], cmap="viridis",
                              aspect="auto")
                    kind = f"g^{key}"
                elif "spatial" in g:
                    ax.imshow(np.asarray(g["spatial"][i]), cmap="viridis",
                              interpolation="nearest")
                    if "channel" in g:
                        top = div.append_axes("top", size="12%", pad=0.03)
                        top.imshow(np.asarray(g["channel"][i])[None, :], cmap="magma",
                                   aspect="auto")
                        top.set_xticks([])
                        top.set_yticks([])
                        title_ax = top
                    kind = "spatial"
                elif "channel" in g:
                    ax.imshow(np.asarray(g["channel"][i])[None, :], cmap="magma",
                              aspect="auto")
                    kind = "channels"
                else:
                    key = next(iter(g), None)
                    if key is not None:
                        arr = np.asarray(g[key][i])
                        ax.imshow(arr if arr.ndim == 2 else arr[None, :], cmap="viridis",
                                  aspect="auto")
                    kind = str(key)
                if i == 0:
                    title = f"block {block.get('index', j) + 1}/{block.get('of', k)}\n{kind}"
                    title_ax.set_title(title, fontsize=7, pad=3)
        fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.02, wspace=0.25,
                            hspace=0.3)
        return to_svg(fig, prefix)
