"""Matplotlib figures rendered to PNG bytes (headless, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from idls.system import upsample_maps  # noqa: E402


def _to_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _image_np(x: Tensor) -> np.ndarray:
    """``3 x H x W`` in [0, 1] -> ``H x W x 3`` numpy."""
    return x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def _map_np(m: Tensor, size: int) -> np.ndarray:
    """``h x w`` map -> ``size x size`` numpy (bilinear upsampling for display)."""
    return upsample_maps(m[None].float().cpu(), size)[0].clamp(0, 1).numpy()


def overlay_png(image: Tensor, attribution: Tensor, title: str = "") -> bytes:
    """One image with its map overlaid (jet, alpha 0.5) as PNG bytes."""
    fig, ax = plt.subplots(figsize=(2.4, 2.4))
    ax.imshow(_image_np(image))
    ax.imshow(_map_np(attribution, image.shape[-1]), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return _to_png(fig)


def map_grid_png(
    x: Tensor,
    adversarial_images: Mapping[str, Tensor],
    benign_maps: Mapping[str, Tensor],
    adversarial_maps: Mapping[str, Tensor],
    *,
    titles: Sequence[str] | None = None,
    adv_titles: Sequence[str] | None = None,
) -> bytes:
    """Rows = images; columns = benign image, adversarial image, then per interpreter its benign and adversarial map.

    Each adversarial map is drawn over the adversarial image made for that interpreter (for a
    classifier-only attack they are all the same image); the second column shows the first one.

    Args:
        x: ``B x 3 x H x W`` benign images in [0, 1].
        adversarial_images: name -> ``B x 3 x H x W`` adversarial images.
        benign_maps, adversarial_maps: name -> ``B x h x w`` maps in [0, 1].
        titles, adv_titles: per-row captions (benign class, adversarial prediction).
    """
    names = list(benign_maps)
    rows, cols = x.shape[0], 2 + 2 * len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.45 * rows), squeeze=False)
    size = x.shape[-1]
    first_adv = adversarial_images[names[0]]
    for r in range(rows):
        panels = [("benign" + (f"\n{titles[r]}" if titles else ""), _image_np(x[r]), None)]
        panels.append(("adversarial" + (f"\n{adv_titles[r]}" if adv_titles else ""), _image_np(first_adv[r]), None))
        for name in names:
            panels.append((f"{name}\nbenign", _image_np(x[r]), _map_np(benign_maps[name][r], size)))
            panels.append((f"{name}\nadversarial", _image_np(adversarial_images[name][r]), _map_np(adversarial_maps[name][r], size)))
        for c, (title, img, heat) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img)
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.55, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 or c < 2:
                ax.set_title(title, fontsize=6)
    fig.tight_layout(pad=0.2)
    return _to_png(fig)


def attack_comparison_png(
    x: Tensor,
    benign_maps: Tensor,
    columns: Mapping[str, tuple[Tensor, Tensor]],
    *,
    titles: Sequence[str] | None = None,
    column_titles: Mapping[str, Sequence[str]] | None = None,
) -> bytes:
    """One interpreter, several attacks side by side: rows = images; columns = the benign map, then per
    attack its adversarial image with its adversarial map.

    Args:
        x: ``B x 3 x H x W`` benign images in [0, 1].
        benign_maps: ``B x h x w`` the interpreter's benign maps.
        columns: attack name -> (``B x 3 x H x W`` adversarial images, ``B x h x w`` their maps).
        titles: per-row captions of the benign column (e.g. the true class).
        column_titles: attack name -> per-row captions (e.g. the adversarial prediction).
    """
    names = list(columns)
    rows = min([x.shape[0], benign_maps.shape[0]] + [columns[n][0].shape[0] for n in names])  # common rows
    cols = 1 + len(names)
    fig, axes = plt.subplots(rows, cols, figsize=(1.45 * cols, 1.45 * rows), squeeze=False)
    size = x.shape[-1]
    for r in range(rows):
        panels = [("benign" + (f"\n{titles[r]}" if titles else ""), x[r], benign_maps[r])]
        for name in names:
            caption = column_titles[name][r] if column_titles and name in column_titles else ""
            panels.append((name + (f"\n{caption}" if caption else ""), columns[name][0][r], columns[name][1][r]))
        for c, (title, image, heat) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(_image_np(image))
            ax.imshow(_map_np(heat, size), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=6)
    fig.tight_layout(pad=0.2)
    return _to_png(fig)


def bar_chart_png(values: Mapping[str, Mapping[str, float]], ylabel: str, title: str = "") -> bytes:
    """Grouped bars: outer key = group (x axis), inner key = series."""
    groups = list(values)
    series = sorted({s for g in groups for s in values[g]})
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(groups) * max(1, len(series)) / 2), 2.6))
    width = 0.8 / max(1, len(series))
    for i, s in enumerate(series):
        ys = [values[g].get(s, float("nan")) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, ys, width, label=s)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=7)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    return _to_png(fig)


def line_chart_png(xs: Sequence[str], series: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
                   title: str = "") -> bytes:
    """One line per series over categorical x values (e.g. epsilons), markers at each value (NaN gaps)."""
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    for name, ys in series.items():
        ax.plot(range(len(xs)), [float(y) for y in ys], marker="o", label=name)
    ax.set_xticks(range(len(xs)), xs, fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    return _to_png(fig)


def heatmap_png(values: Sequence[Sequence[float]], rows: Sequence[str], columns: Sequence[str], *, title: str = "",
                cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> bytes:
    """A labelled heat map of a ``len(rows) x len(columns)`` matrix with each value written in its cell (NaN blank)."""
    data = np.array(values, dtype=float).reshape(len(rows), len(columns))
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * len(columns), 0.9 + 0.4 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if image.norm(v) < 0.5 else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _to_png(fig)


__all__ = ["attack_comparison_png", "bar_chart_png", "heatmap_png", "line_chart_png", "map_grid_png", "overlay_png", "torch"]
