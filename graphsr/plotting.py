"""Event displays and distributions (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from graphsr.detector import Geometry  # noqa: E402


def layer_image(cell_ids, energy, layer: int, center: tuple[float, float], half_width: int = 10,
                geometry: Geometry | None = None) -> np.ndarray:
    """Energies of one layer's fine cells around ``center`` (eta, phi) as an image [2 hw, 2 hw] (eta rows, phi cols).

    ``cell_ids`` are fine-cell ids of ``geometry`` (default COCOA's); energy of a coarser cell can be drawn by
    passing each of its children with ``energy / children``. Phi wraps around.
    """
    geometry = geometry or Geometry.cocoa()
    cell_layer, ieta, iphi = geometry.cell_index(np.asarray(cell_ids))
    n = geometry.grid_sizes[layer]
    c_eta, c_phi = geometry.cell_at(np.array([layer]), np.array([center[0]]), np.array([center[1]]))
    row = ieta - c_eta[0] + half_width
    col = (iphi - c_phi[0] + half_width) % n
    inside = (cell_layer == layer) & (row >= 0) & (row < 2 * half_width) & (col < 2 * half_width)
    image = np.zeros((2 * half_width, 2 * half_width))
    np.add.at(image, (row[inside], col[inside]), np.asarray(energy)[inside])
    return image


def event_display(event, path: str | Path, generated=None, layers=(0, 1, 2), half_width: int = 10,
                  title: str | None = None):
    """Coarse cells, fine truth and (optionally) generated fine cells of one event, per layer, in GeV.

    Args:
        event: a :class:`~graphsr.graphs.PairData` (one event).
        generated: a [Nf] tensor / array of generated fine energies, or a dict ``{label: energies}`` for several.
    """
    fine_cell = event.fine_cell.cpu().numpy()
    parent = event.fine_parent.cpu().numpy()
    children = np.bincount(parent, minlength=event.num_coarse_nodes)
    rows = {"coarse (per fine cell)": event.coarse_energy.cpu().numpy()[parent] / children[parent]}
    if "fine_energy" in event:
        rows["fine truth"] = event.fine_energy.cpu().numpy()
    if generated is not None:
        generated = generated if isinstance(generated, dict) else {"super-resolved": generated}
        rows.update({label: np.asarray(getattr(v, "cpu", lambda: v)()) for label, v in generated.items()})
    truth = rows.get("fine truth", rows["coarse (per fine cell)"])
    hottest = int(np.argmax(truth))
    center = tuple(event.fine_pos[hottest].cpu().numpy())
    images = {label: [layer_image(fine_cell, energy, la, center, half_width) for la in layers]
              for label, energy in rows.items()}
    vmax = max(img.max() for imgs in images.values() for img in imgs)
    norm = LogNorm(vmin=max(vmax * 1e-4, 1e-6), vmax=max(vmax, 1e-5))
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(3.2 * len(layers), 3.0 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(images.items()):
        for c, (layer, img) in enumerate(zip(layers, imgs)):
            ax = axes[r, c]
            mesh = ax.imshow(np.ma.masked_less_equal(img, 0), norm=norm, cmap="viridis", origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{Geometry.cocoa().layers[layer].name}")
            if c == 0:
                ax.set_ylabel(f"{label}\n(eta)")
            if r == len(rows) - 1:
                ax.set_xlabel("phi")
    fig.colorbar(mesh, ax=axes, label="energy per fine cell [GeV]", shrink=0.8)
    if title:
        fig.suptitle(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_histograms(values: dict[str, np.ndarray], path: str | Path, xlabel: str, bins=60, log: bool = True):
    """Overlaid normalised histograms of several samples (e.g. truth vs model vs baselines)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in values.values()])
    edges = np.histogram_bin_edges(finite, bins=bins)
    for label, v in values.items():
        ax.hist(np.asarray(v), bins=edges, histtype="step", density=True, label=label)
    ax.set_xlabel(xlabel)
    ax.set_yscale("log" if log else "linear")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def line_plot(series: dict, path: str | Path, xlabel: str, ylabel: str, *, logx: bool = False,
              hlines: dict | None = None, diagonal: bool = False):
    """Curves ``{label: (x, y, yerr or None)}`` with optional labelled horizontal reference lines."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, (x, y, yerr) in series.items():
        ax.errorbar(x, y, yerr=yerr, marker="o", ms=4, capsize=2, label=label)
    for label, value in (hlines or {}).items():
        ax.axhline(value, ls="--", lw=1, color="grey")
        ax.annotate(label, (0.02, value), xycoords=("axes fraction", "data"), fontsize=8, va="bottom")
    if diagonal:
        ax.plot([0, 1], [0, 1], ls=":", color="grey", label="calibrated")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def history_plot(rows: list[dict], path: str | Path, smooth: int = 50):
    """Loss curves of a training history (:func:`graphsr.training.history.read_history`): every step's training
    loss with its running mean over ``smooth`` steps, the validation losses, and the learning rate below."""
    step = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([np.nan if r["train_loss"] is None else r["train_loss"] for r in rows])
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(6, 4.8), gridspec_kw={"height_ratios": (3, 1)})
    top.plot(step, loss, lw=0.5, alpha=0.4, color="C0", label="training loss (per step)")
    if len(loss) >= smooth:
        top.plot(step[smooth - 1:], np.convolve(loss, np.ones(smooth) / smooth, "valid"), color="C0",
                 label=f"training loss (mean of {smooth} steps)")
    if val:
        top.plot(*zip(*val), "o-", ms=4, color="C1", label="validation loss (EMA weights)")
    top.set_ylabel("loss")
    top.legend(fontsize=8)
    bottom.plot(step, [r["lr"] for r in rows], color="C2")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimiser step")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
