"""SR3-style conditional super-resolution of fine-cell energies (Saharia et al., arXiv 2104.07636).

The diffusion runs on one number per fine cell: its energy as a fraction of ``margin`` times its parent's
measured energy, in logit space, standardised (:func:`target_transform`). The network sees, per fine cell, the
noisy target and its parent's measured energy (SR3 concatenates the upsampled low-resolution input the same way),
plus cell positions and layers (added by the backbone), and a noise-level embedding through adaptive LayerNorm.

:class:`SR3Network` is the raw network F; :class:`graphsr.diffusion.Denoiser` wraps it into D(x; sigma).
"""

from __future__ import annotations

import torch
from torch import nn

from graphsr.config import DiffusionConfig, ModelConfig
from graphsr.graphs.transforms import FractionOfParent, InvertibleCompose, SignedLog, Standardize
from graphsr.nn import GraphTransformer, NoiseEmbedding

COARSE_INPUT = SignedLog("coarse_energy", "coarse_input", scale=0.01)


def target_transform(margin: float = 1.2, mean: float = 0.0, std: float = 1.0) -> InvertibleCompose:
    """fine_energy -> fine_target: logit of E_fine / (margin E_parent), standardised with (mean, std)."""
    return InvertibleCompose([FractionOfParent("fine_energy", "fine_target", margin=margin),
                              Standardize("fine_target", mean=mean, std=std)])


def add_inputs(batch, transform: InvertibleCompose | None = None):
    """Add the network's inputs (``coarse_input``) and, when fine energies are known, the target."""
    batch = COARSE_INPUT(batch)
    if transform is not None and "fine_energy" in batch:
        batch = transform(batch)
    return batch


class SR3Network(nn.Module):
    """The network of the denoiser: (noisy target, noise level, coarse event) -> one value per fine cell.

    Args:
        config: widths and depths (:class:`~graphsr.config.ModelConfig`).
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.noise_embedding = NoiseEmbedding(config.width)
        self.backbone = GraphTransformer(
            fine_in=2, coarse_in=1, out=1, width=config.width, depth=config.depth, coarse_depth=config.coarse_depth,
            heads=config.heads, context_tokens=config.context_tokens, cond_dim=config.width, dropout=config.dropout)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, batch: torch.Tensor, data,
                prepared: dict | None = None) -> torch.Tensor:
        """x: [Nf, 1] noisy (scaled) target; c_noise: [B] noise conditioning; data: the batch of events;
        prepared: ``self.backbone.prepare(data)``, to reuse across sampling steps."""
        parent_input = data.coarse_input[data.fine_parent].unsqueeze(1)
        x_fine = torch.cat([x, parent_input], dim=1)
        return self.backbone(x_fine, data.coarse_input.unsqueeze(1), data, self.noise_embedding(c_noise), prepared)


MODES = ("free", "conserving", "fused")


def parent_sums(energy: torch.Tensor, data) -> torch.Tensor:
    """Sum of the children of every coarse cell; ``energy`` is ``[..., Nf]``."""
    flat = energy.reshape(-1, energy.size(-1))
    out = flat.new_zeros(flat.size(0), data.coarse_energy.size(0))
    out.index_add_(1, data.fine_parent, flat)
    return out.reshape(*energy.shape[:-1], -1)


def fuse(samples: torch.Tensor, data, noise: torch.Tensor, spread_scale: float = 1.0, energy_scale: float = 1.0,
         floor: float = 1e-3) -> torch.Tensor:
    """Children that sum to the measurement and the model combined by their uncertainties, per coarse cell.

    Each coarse cell has two estimates of its true energy: the measurement E (Gaussian noise of known sigma,
    ``noise``) and the ensemble's sum of children S (mean S_bar, variance v over the members, times
    ``spread_scale**2``: small ensembles of an imperfect model are over-confident; and S times ``energy_scale``:
    an imperfect model's sums can be biased, a bias the measurement does not have). Both factors are calibrated on
    validation events, see :func:`graphsr.eval.evaluate.calibrate_fusion`. The two are combined by inverse
    variance, ``T = (E / sigma^2 + S_bar / v) / (1 / sigma^2 + 1 / v)``, and every member's children are
    rescaled to sum to T, keeping the member's shares. Where the model is sure (cells it reads as noise) T follows
    the model; where it is not (hot cells, whose measurement is precise) T follows the measurement.

    Args:
        samples: ``[K, Nf]`` ensemble (K >= 2), GeV.
        data: the events (``coarse_energy``, ``fine_parent``).
        noise: ``[Nc]`` noise sigma of each coarse cell, GeV.
        spread_scale: factor on the ensemble's standard deviation.
        energy_scale: factor on the ensemble's sums (and their spread): the model's energy-scale correction.
        floor: smallest ensemble standard deviation, as a fraction of sigma.
    """
    if samples.size(0) < 2:
        raise ValueError("fused mode needs an ensemble of at least 2 samples (it uses their spread)")
    sums = parent_sums(samples, data)                        # [K, Nc]
    sums = energy_scale * sums
    mean, var = sums.mean(0), (spread_scale**2 * sums.var(0)).clamp_min((floor * noise) ** 2)
    w_measured, w_model = noise.pow(-2), var.reciprocal()
    total = (data.coarse_energy * w_measured + mean * w_model) / (w_measured + w_model)
    return torch.stack([conserve(s, data, total) for s in samples])


def conserve(energy: torch.Tensor, data, total: torch.Tensor | None = None) -> torch.Tensor:
    """Project fine energies so each parent's children sum exactly to ``total`` (default: the measured energy).

    Children keep their relative shares (negative values count as zero); a parent whose children are all zero
    shares its energy evenly. Parents with negative measured energy give negative children, summing exactly.
    """
    total_energy = data.coarse_energy if total is None else total
    from graphsr import ops

    num_coarse = data.coarse_energy.size(0)
    share = energy.clamp_min(0)
    total = ops.scatter(share, data.fine_parent, num_coarse, "sum")
    children = ops.scatter(torch.ones_like(share), data.fine_parent, num_coarse, "sum")
    empty = (total <= 0)[data.fine_parent]
    share = torch.where(empty, 1.0 / children[data.fine_parent], share / total.clamp_min(1e-30)[data.fine_parent])
    return share * total_energy[data.fine_parent]
