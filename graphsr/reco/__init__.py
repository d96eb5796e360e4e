"""Downstream reconstruction on the graph backbone: a learned particle-flow model (particle count, energies,
directions and classes) trained per input type: coarse cells, fine truth or super-resolved cells."""

from graphsr.reco.config import ParticleFlowConfig, RecoConfig, SRInputConfig, load_reco_config
from graphsr.reco.model import ParticleFlow, hungarian_match, set_loss
from graphsr.reco.training import INPUT_TYPES, ParticleFlowReco, check_sr_input, train_reco

__all__ = ["INPUT_TYPES", "ParticleFlow", "ParticleFlowConfig", "ParticleFlowReco", "RecoConfig", "SRInputConfig",
           "check_sr_input", "hungarian_match", "load_reco_config", "set_loss", "train_reco"]
