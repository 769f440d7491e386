"""Figures for the paper tables (matplotlib, Agg backend). Each function writes one PNG atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..io import atomic_path  # noqa: E402

__all__ = ["plot_combine_ratio", "plot_threshold_curve", "plot_pr_curve"]


def _save(fig, out):
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def _error_bars(g, col):
    """[[below], [above]] distances of the ``col_lo`` / ``col_hi`` interval from ``col`` (0 where none)."""
    if f"{col}_lo" not in g.columns:
        return None
    value = g[col].astype(float)
    lo = g[f"{col}_lo"].astype(float).fillna(value)
    hi = g[f"{col}_hi"].astype(float).fillna(value)
    return [(value - lo).to_numpy(), (hi - value).to_numpy()]


def plot_combine_ratio(df, out):
    """GT-known Loc and MaxBoxAccV2 (%) vs combine ratio w, one line per (dataset, run), with error bars
    of the ``<metric>_lo`` / ``<metric>_hi`` confidence intervals where the table has them."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for (ds, run), g in df.sort_values("ratio").groupby(["dataset", "run"]):
        for ax, col in zip(axes, ("gt_known", "max_box_acc_v2")):
            ax.errorbar(g["ratio"], g[col].astype(float), yerr=_error_bars(g, col), marker="o", capsize=3,
                        label=f"{ds}/{run}")
    for ax, title in zip(axes, ("GT-known Loc (%)", "MaxBoxAccV2 (%)")):
        ax.set_xlabel("combine ratio w")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, out)


def plot_threshold_curve(df, out):
    """GT-known and Top-1 Loc (%) vs CAM threshold, one line per (dataset, run, variant), with a shaded
    band for the ``<metric>_lo`` / ``<metric>_hi`` confidence intervals where the table has them."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, g in df.groupby(["dataset", "run", "variant"]):
        for ax, col in zip(axes, ("gt_known", "top1_loc")):
            if g[col].notna().any():
                (line,) = ax.plot(g["threshold"], g[col].astype(float), label="/".join(key))
                if f"{col}_lo" in g.columns and g[f"{col}_lo"].notna().any():
                    ax.fill_between(g["threshold"], g[f"{col}_lo"].astype(float), g[f"{col}_hi"].astype(float),
                                    color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, title in zip(axes, ("GT-known Loc (%)", "Top-1 Loc (%)")):
        ax.set_xlabel("CAM threshold")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    _save(fig, out)


def plot_pr_curve(df, out):
    """Pixel precision vs recall (the PxAP curve), one line per (dataset, run, variant) labelled with its
    PxAP; a note instead when no summary was evaluated with masks."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for key, g in df.groupby(["dataset", "run", "variant"]):
        g = g.dropna(subset=["precision"]).sort_values("recall")
        ax.plot(g["recall"], g["precision"], label=f"{'/'.join(key)} (PxAP {g['pxap'].iloc[0]:.1f})")
    if df.empty:
        ax.text(0.5, 0.5, "no dataset with masks", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (pixels)")
    ax.set_ylabel("precision (pixels)")
    ax.set_title("Pixel precision-recall (PxAP)")
    ax.grid(alpha=0.3)
    _save(fig, out)
