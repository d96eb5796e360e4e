"""Units and thresholds that every layer shares: graphsr works in GeV; COCOA files hold MeV."""

MEV_PER_GEV = 1000.0
HIT_THRESHOLD = 0.001  # GeV: a fine cell counts as hit above 1 MeV
