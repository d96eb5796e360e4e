"""The branches COCOA writes, with their element types: the reference graphsr's writers follow.

Transcribed from COCOA's output code (github.com/cocoa-hep/cocoa-hep, ``COCOA/src/*.cc``: every
``set_tree_branches``), for a standard run. Every branch is a per-event vector: ``"int32"`` is ``vector<int>``,
``"float32"`` ``vector<float>``, ``"var * float32"`` ``vector<vector<float>>``. COCOA stores indices into other
lists as floats in some branches (``topo_idx``, ``particle_to_node_idx``, ``cell_parent_list``); graphsr keeps
those types so that files it writes look like COCOA's to any reader.

``Low_Tree`` (``Out_Tree`` in normal mode) holds every group below; ``High_Tree`` the cell, track and graph
branches of the fine cells. Some groups exist only with options of COCOA's config (``doPFlow``,
``doSuperclustering``).
"""

from __future__ import annotations

INT, FLOAT, NESTED = "int32", "float32", "var * float32"
TRACK_LAYERS = 6  # track_{x,y,z}_layer_<i>: one per calorimeter layer

CELL_BRANCHES = {
    "cell_layer": INT, "cell_x": FLOAT, "cell_y": FLOAT, "cell_z": FLOAT, "cell_eta": FLOAT, "cell_phi": FLOAT,
    "cell_e": FLOAT, "cell_che": FLOAT, "cell_nue": FLOAT, "cell_topo_idx": INT, "cell_parent_idx": INT,
    "cell_conv_el_idx": INT, "cell_parent_list": NESTED, "cell_parent_energy": NESTED,
}
TRACK_BRANCHES = {
    "track_pdgid": INT, "track_parent_idx": INT, "track_d0": FLOAT, "track_z0": FLOAT, "track_theta": FLOAT,
    "track_phi": FLOAT, "track_qoverp": FLOAT, "track_reconstructed": INT, "track_in_acceptance": INT,
    **{f"track_{axis}_layer_{i}": FLOAT for i in range(TRACK_LAYERS) for axis in "xyz"},
}
GRAPH_BRANCHES = {
    "track_to_cell_edge_start": INT, "track_to_cell_edge_end": INT, "cell_to_cell_edge_start": INT,
    "cell_to_cell_edge_end": INT, "particle_to_node_idx": NESTED, "particle_to_node_weight": NESTED,
}
MAPPING_TYPES = {"low_cell_to_high_cell_edge": INT, "high_cell_to_low_cell_edge": INT}
PARTICLE_BRANCHES = {
    "particle_pdgid": INT, "particle_isIso": INT, "particle_pt": FLOAT, "particle_eta": FLOAT, "particle_phi": FLOAT,
    "particle_e": FLOAT, "particle_prod_x": FLOAT, "particle_prod_y": FLOAT, "particle_prod_z": FLOAT,
    "particle_track_idx": INT, "particle_eta_extrap_calo": FLOAT, "particle_phi_extrap_calo": FLOAT,
    "particle_eta_extrap_its": FLOAT, "particle_phi_extrap_its": FLOAT, "particle_dep_energy": FLOAT,
}
CONVERSION_BRANCHES = {
    "conv_el_primary_photon_idx": INT, **{f"conv_el_{name}": FLOAT for name in
                                          ("q", "px", "py", "pz", "prod_x", "prod_y", "prod_z")},
}
TRUTH_GRAPH_BRANCHES = {
    "node_idx": INT, "node_pdg_id": INT, "node_phi": FLOAT, "node_eta": FLOAT, "node_pt": FLOAT, "node_m": FLOAT,
    "node_isfinal": INT, "node_prodx": FLOAT, "node_prody": FLOAT, "node_prodz": FLOAT, "node_final_state_idx": INT,
    "node_decx": FLOAT, "node_decy": FLOAT, "node_decz": FLOAT, "node_edge_start": INT, "node_edge_end": INT,
}
TOPO_BRANCHES = {"topo_idx": FLOAT, **{f"topo_{name}": FLOAT for name in
                                       ("bary_eta", "bary_phi", "bary_rho", "bary_sigma_eta", "bary_sigma_phi", "e")}}


def jet_branches(prefix: str) -> dict[str, str]:
    """Jets built from ``prefix`` objects (``true``, ``topo``, ``pflow``): one entry per jet, plus the jet index
    of every constituent."""
    out = {f"{prefix}_jet_{name}": FLOAT for name in ("pt", "eta", "phi", "m")}
    out[f"{prefix}_jet_constituents_jetIndex"] = INT
    if prefix == "true":
        out["true_jet_truth_id"] = INT
    return out


PFLOW_BRANCHES = {  # with doPFlow
    "cell_pflow_object_idx": INT, "track_pflow_object_idx": INT, "track_lhed": INT,
    **{f"pflow_{name}": FLOAT for name in ("eta", "phi", "px", "py", "pz", "e", "charge")}, "pflow_parent_idx": INT,
    **jet_branches("pflow"),
}
SUPERCLUSTER_BRANCHES = {  # with doSuperclustering
    **{f"supercluster_{name}": FLOAT for name in ("e", "phi", "eta", "seed_e", "track_phi", "track_eta", "track_pt")},
    "supercluster_topos": NESTED, "supercluster_track": INT, "supercluster_conv_track": INT,
    "supercluster_pdgid": INT, "supercluster_N": INT,
}

LOW_TREE_BRANCHES = {**CELL_BRANCHES, **TRACK_BRANCHES, **TRUTH_GRAPH_BRANCHES, **PARTICLE_BRANCHES,
                     **CONVERSION_BRANCHES, **TOPO_BRANCHES, **MAPPING_TYPES, **GRAPH_BRANCHES,
                     **jet_branches("true"), **jet_branches("topo")}
HIGH_TREE_BRANCHES = {**CELL_BRANCHES, **TRACK_BRANCHES, **MAPPING_TYPES, **GRAPH_BRANCHES}
OPTIONAL_BRANCHES = {**PFLOW_BRANCHES, **SUPERCLUSTER_BRANCHES}
COCOA_TYPES = {**LOW_TREE_BRANCHES, **OPTIONAL_BRANCHES}
