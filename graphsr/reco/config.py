"""Configuration of a particle-flow run (``configs/reco/*.yaml``): the data and training sections of a
super-resolution run, plus the model and the super-resolved inputs.

Unknown keys are errors, every field has a default; read with :func:`load_reco_config`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from graphsr.config import DataConfig, TrainConfig, load_config


@dataclass
class ParticleFlowConfig:
    max_particles: int = 4                    # N_max: counts 0..N_max, N_max particle queries
    width: int = 64                           # hidden features per cell and per query
    depth: int = 3                            # cell-graph blocks (encoder)
    decoder_depth: int = 2                    # query blocks (self-attention, cross-attention to the cells, MLP)
    heads: int = 4
    context_tokens: int = 2                   # pooled event tokens per encoder block (0: none)
    dropout: float = 0.0
    cell_threshold: float = 0.001             # GeV: cells above it enter (the published model: 1 MeV)
    k: int = 8                                # kNN neighbours of a cell within its layer
    k_between: int = 4                        # ... and in each adjacent layer
    match_radius: float = 0.1                 # evaluation: largest Delta R of a reconstructed-true match
    incidence_weight: float = 0.0             # training: weight of the published model's incidence loss against
                                              # the cells' true particle fractions (0: none; > 0: the training
                                              # files need particle_to_node_idx / _weight; docs/reconstruction.md)


@dataclass
class SRInputConfig:
    files: list[str] = field(default_factory=list)  # `graphsr sample` of data.train (same files, same order)
    checkpoint: str | None = None             # the super-resolution checkpoint that made them


@dataclass
class RecoConfig:
    data: DataConfig = field(default_factory=DataConfig)     # data.train: the events the reco model learns from
    model: ParticleFlowConfig = field(default_factory=ParticleFlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sr_input: SRInputConfig = field(default_factory=SRInputConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def load_reco_config(path: str | Path) -> RecoConfig:
    """Read a particle-flow YAML config; errors name the file and the offending key."""
    return load_config(path, RecoConfig)
