import numpy as np
import pytest
import torch

from graphsr.detector import Geometry
from graphsr.detector.geometry import BARREL_ETA, R0


@pytest.fixture(scope="module")
def fine():
    return Geometry.cocoa()


def all_cells(geometry):
    ids = np.arange(geometry.num_cells)
    return ids, geometry.cell_index(ids)


def test_layers_and_coarse_noise(fine):
    assert fine.grid_sizes == (256, 256, 128, 64, 64, 32)
    for factor, noise in ((2, [26, 68, 82, 150, 100, 50]), (4, [52, 136, 164, 300, 200, 100])):
        coarse = fine.coarsen(factor)
        assert coarse.noise.tolist() == noise
        assert coarse.scale_to(fine) == factor
    assert fine.coarsen(2).coarsen(2).grid_sizes == fine.coarsen(4).grid_sizes
    with pytest.raises(ValueError, match="does not divide"):
        fine.coarsen(3)
    with pytest.raises(ValueError, match="not a positive integer"):
        fine.scale_to(fine.coarsen(2))


def test_round_trip_every_cell(fine):
    ids, (layer, ieta, iphi) = all_cells(fine)
    assert np.array_equal(fine.cell_id(layer, ieta, iphi), ids)
    eta, phi = fine.cell_center(layer, ieta, iphi)
    assert np.all(np.abs(eta) < 3) and np.all(phi > -np.pi) and np.all(phi <= np.pi)
    back = fine.cell_at(layer, eta, phi)
    assert np.array_equal(back[0], ieta) and np.array_equal(back[1], iphi)
    # positions -> (eta, phi) again
    x, y, z = fine.cell_position(layer, ieta, iphi)
    r = np.hypot(x, y)
    assert np.allclose(np.arcsinh(z / r), eta, atol=1e-9)
    assert np.allclose(np.arctan2(y, x), phi, atol=1e-9)
    with pytest.raises(ValueError):
        fine.cell_index(np.array([fine.num_cells]))


def test_torch_matches_numpy(fine):
    layer, ieta, iphi = np.array([0, 2, 5]), np.array([3, 70, 31]), np.array([255, 64, 0])
    np_eta, np_phi = fine.cell_center(layer, ieta, iphi)
    t_eta, t_phi = fine.cell_center(torch.tensor(layer), torch.tensor(ieta), torch.tensor(iphi))
    assert np.allclose(t_eta.numpy(), np_eta) and np.allclose(t_phi.numpy(), np_phi)
    assert torch.equal(fine.cell_at(torch.tensor(layer), t_eta.double(), t_phi.double())[1], torch.tensor(iphi))


def test_phi_wrap(fine):
    layer = np.zeros(4, dtype=np.int64)
    # just below +pi, exactly pi, just above -pi, and a tiny negative phi (wraps to the last cell)
    phi = np.array([np.pi - 1e-9, np.pi, -np.pi + 1e-9, -1e-12])
    _, iphi = fine.cell_at(layer, np.zeros(4), phi)
    assert iphi.tolist() == [127, 128, 128, 255]
    # the centres of the two cells either side of +-pi are one cell apart across the wrap
    _, phi_hi = fine.cell_center(layer[:1], np.array([0]), np.array([127]))
    _, phi_lo = fine.cell_center(layer[:1], np.array([0]), np.array([128]))
    assert phi_hi[0] > 0 > phi_lo[0]
    assert np.isclose((phi_lo[0] - phi_hi[0]) % (2 * np.pi), 2 * np.pi / 256)


def test_barrel_endcap_boundary(fine):
    eps = 1e-9
    # the front face is continuous at |eta| = 1.5; the barrel is a cylinder, the endcap a plane
    inside, outside = fine.front_distance(np.array([BARREL_ETA - eps, BARREL_ETA + eps]))
    assert inside == pytest.approx(outside, rel=1e-6)
    eta = np.array([0.3, 1.2, 2.0, -2.7])
    x, y, z = fine.position(eta, np.zeros(4), np.zeros(4))
    barrel = np.abs(eta) <= BARREL_ETA
    assert np.allclose(np.hypot(x, y)[barrel], R0)
    assert np.allclose(np.abs(z[~barrel]), R0 * np.sinh(BARREL_ETA))
    # depth is along the line of flight
    x1, y1, z1 = fine.position(eta, np.zeros(4), np.full(4, 100.0))
    assert np.allclose(np.sqrt((x1 - x) ** 2 + (y1 - y) ** 2 + (z1 - z) ** 2), 100.0)


def test_parent_and_children(fine):
    coarse = fine.coarsen(4)
    layer, ieta, iphi = np.array([1, 5]), np.array([10, 7]), np.array([63, 0])
    children = coarse.children(fine, layer, ieta, iphi)
    assert children[1].shape == (2, 16)
    assert np.all(np.stack(fine.parent(coarse, *children)) == np.stack([ieta, iphi])[:, :, None])
    child_ids = fine.cell_id(*children)
    assert np.all(fine.parent_id(coarse, child_ids.reshape(-1)).reshape(2, 16) ==
                  coarse.cell_id(layer, ieta, iphi)[:, None])
    # every fine cell has exactly one parent, each parent 16 children
    ids, _ = all_cells(fine)
    assert np.all(np.bincount(fine.parent_id(coarse, ids)) == 16)
    # children lie inside their parent's (eta, phi) cell
    c_eta, c_phi = coarse.cell_center(layer, ieta, iphi)
    f_eta, f_phi = fine.cell_center(*children)
    assert np.all(np.abs(f_eta - c_eta[:, None]) < 3.0 / coarse.n[layer][:, None])
