"""The published figures graphsr measures itself against, and the windows and levels every report section uses."""

# The published figures (arXiv 2409.16052), shown beside ours: single electrons 2x (event ECAL energy), and the
# multi-particle 4x set through a trained particle-flow model (coarse -> super-resolved input)
PUBLISHED = {"coarse_spread": 0.0057, "sr_spread": 0.0034, "ratio": 0.0034 / 0.0057,
             "ensemble_spread": {1: None, 2: 0.0041, 5: 0.0036, 10: 0.0034, 25: 0.0032},
             "multi_particle": {"cardinality": {"1": (0.9938, 0.9941), "2": (0.8852, 0.9102), "3": (0.7762, 0.8197),
                                                "4": (0.8132, 0.8142)},
                                "energy": (0.37, 0.27), "eta": (0.03, 0.02), "phi": (0.11, 0.09)}}
# shower shapes and the event features of FPD / KPD / AUC use the cells within this distance in eta and in phi of
# each layer's leading cell: the shower (the multi-particle gun's photons lie ~0.1 from the electron), without the
# noise-only clusters elsewhere, whose energy in the super-resolved output would set the widths (it is counted with
# the hallucinated energy instead)
SHOWER_WINDOW = 0.2
COVERAGE_LEVELS = (0.50, 0.68, 0.95)
