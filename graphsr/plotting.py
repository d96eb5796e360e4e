"""Plots in HEP style (mplhep, hist): histograms with statistical error bars and ratio panels against the truth,
event displays on (eta, phi) axes, curves.

Every function draws on its own :class:`matplotlib.figure.Figure` and writes a PNG: nothing here touches pyplot's
state or matplotlib's backend, so importing graphsr inside a notebook changes nothing there.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from graphsr.detector import Geometry
from graphsr.detector.geometry import ETA_MAX

REFERENCE = "fine truth"  # the sample ratio panels divide by, when present


@contextmanager
def _figure(path: str | Path, **kwargs):
    """A Figure in mplhep's ROOT style (made for figures of about 10 x 10 inches), written to ``path``."""
    import matplotlib
    import mplhep

    with matplotlib.style.context(mplhep.style.ROOT):
        fig = Figure(**kwargs)
        yield fig
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80, bbox_inches="tight")


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


def layer_window(layer: int, center: tuple[float, float], half_width: int = 10,
                 geometry: Geometry | None = None) -> tuple[float, float, float, float]:
    """(eta_min, eta_max, phi_min, phi_max) of :func:`layer_image`'s window: cell edges, phi continuous across pi."""
    geometry = geometry or Geometry.cocoa()
    n = geometry.grid_sizes[layer]
    c_eta, c_phi = geometry.cell_at(np.array([layer]), np.array([center[0]]), np.array([center[1]]))
    d_eta, d_phi = 2 * ETA_MAX / n, 2 * np.pi / n
    phi_min = (c_phi[0] - half_width) * d_phi
    if center[1] < 0:  # cell_at counts phi from 0 to 2 pi: back to the centre's side of the pi line
        phi_min -= 2 * np.pi
    eta_min = -ETA_MAX + (c_eta[0] - half_width) * d_eta
    return eta_min, eta_min + 2 * half_width * d_eta, phi_min, phi_min + 2 * half_width * d_phi


def event_display(event, path: str | Path, generated=None, layers=(0, 1, 2), half_width: int = 10,
                  title: str | None = None):
    """Coarse cells, fine truth and (optionally) generated fine cells of one event, per layer, in GeV, on
    (phi, eta) axes around the event's hottest fine cell.

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
    with _figure(path, figsize=(6 * len(layers) + 2, 5 * len(rows))) as fig:
        axes = fig.subplots(len(rows), len(layers), squeeze=False)
        for r, (label, imgs) in enumerate(images.items()):
            for c, (layer, img) in enumerate(zip(layers, imgs)):
                ax = axes[r, c]
                eta_min, eta_max, phi_min, phi_max = layer_window(layer, center, half_width)
                mesh = ax.imshow(np.ma.masked_less_equal(img, 0), norm=norm, cmap="viridis", origin="lower",
                                 extent=(phi_min, phi_max, eta_min, eta_max), aspect="auto")
                if r == 0:
                    ax.set_title(Geometry.cocoa().layers[layer].name)
                if c == 0:
                    ax.set_ylabel(f"{label}\n$\\eta$")
                if r == len(rows) - 1:
                    ax.set_xlabel("$\\phi$ [rad]")
        fig.colorbar(mesh, ax=axes, label="energy per fine cell [GeV]", shrink=0.8)
        if title:
            fig.suptitle(title)
    return path


def _histogram(values: np.ndarray, edges: np.ndarray):
    import hist

    h = hist.Hist(hist.axis.Variable(edges), storage=hist.storage.Weight())
    h.fill(values[np.isfinite(values)])
    return h


def energy_histograms(values: dict[str, np.ndarray], path: str | Path, xlabel: str, bins=60, log: bool = True,
                      reference: str = REFERENCE):
    """Normalised histograms of several samples (e.g. truth vs model vs baselines) with statistical error bars,
    and, when ``reference`` is one of them, a panel of each sample's ratio to it (errors of both propagated)."""
    import mplhep

    finite = np.concatenate([np.asarray(v)[np.isfinite(v)] for v in values.values()])
    edges = np.histogram_bin_edges(finite, bins=bins)
    hists = {label: _histogram(np.asarray(v, dtype=float), edges) for label, v in values.items()}
    width = np.diff(edges)

    def density(h):
        total = max(h.sum().value, 1e-300)
        return h.values() / total / width, np.sqrt(h.variances()) / total / width

    ratio = reference in hists
    with _figure(path, figsize=(9, 9 if ratio else 7)) as fig:
        if ratio:
            top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
        else:
            top, bottom = fig.subplots(), None
        for i, (label, h) in enumerate(hists.items()):
            y, err = density(h)
            is_reference = label == reference
            mplhep.histplot(y, edges, yerr=err, ax=top, label=label, color="black" if is_reference else f"C{i}",
                            histtype="errorbar" if is_reference else "step")
        top.set_yscale("log" if log else "linear")
        top.set_ylabel("normalised entries")
        top.legend(fontsize=16)
        if bottom is None:
            top.set_xlabel(xlabel)
            return path
        ref, ref_err = density(hists[reference])
        for i, (label, h) in enumerate(hists.items()):
            if label == reference:
                continue
            y, err = density(h)
            with np.errstate(divide="ignore", invalid="ignore"):
                r = y / ref
                r_err = r * np.sqrt((err / y) ** 2 + (ref_err / ref) ** 2)
            mplhep.histplot(r, edges, yerr=np.nan_to_num(r_err), ax=bottom, color=f"C{i}", histtype="errorbar",
                            markersize=3)
        bottom.axhline(1, color="black", lw=1)
        bottom.set_ylim(0.01, 1.99)
        bottom.set_ylabel(f"ratio to\n{reference}", fontsize=16)
        bottom.set_xlabel(xlabel)
    return path


def line_plot(series: dict, path: str | Path, xlabel: str, ylabel: str, *, logx: bool = False,
              hlines: dict | None = None, diagonal: bool = False):
    """Curves ``{label: (x, y, yerr or None)}`` with optional labelled horizontal reference lines."""
    with _figure(path, figsize=(9, 7)) as fig:
        ax = fig.subplots()
        _curves(ax, series, hlines, diagonal, logx, xlabel, ylabel)
    return path


def _curves(ax, series, hlines, diagonal, logx, xlabel, ylabel):
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
    ax.legend(fontsize=16)


def history_plot(rows: list[dict], path: str | Path, smooth: int = 50):
    """Loss curves of a training history (:func:`graphsr.training.history.read_history`): every step's training
    loss with its running mean over ``smooth`` steps, the validation losses, and the learning rate below."""
    step = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([np.nan if r["train_loss"] is None else r["train_loss"] for r in rows])
    val = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    with _figure(path, figsize=(9, 9)) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
        _history_axes(top, bottom, step, loss, val, rows, smooth)
    return path


def _history_axes(top, bottom, step, loss, val, rows, smooth):
    top.plot(step, loss, lw=0.5, alpha=0.4, color="C0", label="training loss (per step)")
    if len(loss) >= smooth:
        top.plot(step[smooth - 1:], np.convolve(loss, np.ones(smooth) / smooth, "valid"), color="C0",
                 label=f"training loss (mean of {smooth} steps)")
    if val:
        top.plot(*zip(*val), "o-", ms=4, color="C1", label="validation loss (EMA weights)")
    top.set_ylabel("loss")
    top.legend(fontsize=16)
    bottom.plot(step, [r["lr"] for r in rows], color="C2")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("optimiser step")
