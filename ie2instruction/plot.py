"""``--plot PATH.png``: per-label P/R/F1 bars of the ``total`` result (matplotlib, the optional ``plot`` extra)."""
from __future__ import annotations

import warnings

from .metrics import MissingExtra

BREAKDOWNS = (("per_label", "label"), ("event_per_label", "event type"), ("argument_per_label", "argument role"))


def require_matplotlib():
    """Import matplotlib with a file-only backend, or raise MissingExtra naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("--plot needs matplotlib: pip install 'instructkgc[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_result(result: dict, path: str, title: str = "", max_labels: int = 60) -> None:
    """One horizontal bar chart per breakdown present (labels with most support first, at most ``max_labels``)."""
    plt = require_matplotlib()
    _use_cjk_font(plt)
    total = result["total"]
    panels = [(total[key], what) for key, what in BREAKDOWNS if total.get(key)]
    if not panels:
        panels = [({}, "label")]
    heights = [max(2.0, 0.32 * min(len(d), max_labels) + 1.2) for d, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (per, what) in zip(axes[:, 0], panels):
        labels = sorted(per, key=lambda k: (-per[k]["support"], k))[:max_labels][::-1]
        ys = range(len(labels))
        for i, (metric, color) in enumerate((("P", "#4c72b0"), ("R", "#dd8452"), ("F1", "#55a868"))):
            ax.barh([y + (i - 1) * 0.27 for y in ys], [per[k][metric] for k in labels], height=0.27,
                    color=color, label=metric)
        ax.set_yticks(list(ys))
        ax.set_yticklabels([f"{k} ({per[k]['support']})" for k in labels])
        ax.set_xlim(0, 100)
        ax.set_xlabel("score (%)")
        ax.set_title(f"per {what} (gold support in brackets)" if labels else f"no {what}s to show")
        if labels:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    if title:
        fig.suptitle(title)
    with warnings.catch_warnings():  # "Glyph ... missing from font" when no CJK font is installed
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)


def _use_cjk_font(plt) -> None:
    """Prefer an installed font that has CJK glyphs (labels are often Chinese); keep the default otherwise."""
    from matplotlib import font_manager
    names = {f.name for f in font_manager.fontManager.ttflist}
    for name in ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei",
                 "PingFang SC", "Source Han Sans SC"):
        if name in names:
            plt.rcParams["font.sans-serif"] = [name, *plt.rcParams["font.sans-serif"]]
            return
