"""The counter-based uniforms: splitmix64 against the published output of
Vigna's reference generator (seed 0), and the properties generation relies on."""
import numpy as np
import torch

from real_ext.generation.rng import splitmix64, uniforms

GOLDEN = 0x9E3779B97F4A7C15


def test_splitmix64_matches_the_reference_sequence():
    # splitmix64.c seeded with 0: its first three next() outputs.
    states = np.array([0, GOLDEN, (2 * GOLDEN) % 2 ** 64], dtype=np.uint64)
    assert [int(v) for v in splitmix64(states)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_uniforms_are_keyed_per_sample_and_step():
    ids = torch.tensor([4, 0, 9, 2 ** 40])
    u = uniforms(7, ids, 3)
    assert u.dtype == torch.float32 and ((u >= 0) & (u < 1)).all()
    # A sample's draw does not depend on the others in the batch, nor on their order.
    assert uniforms(7, ids[2:3], 3).item() == u[2].item()
    assert uniforms(7, ids.flip(0), 3).tolist() == u.flip(0).tolist()
    assert uniforms(7, ids, 4).tolist() != u.tolist() and uniforms(8, ids, 3).tolist() != u.tolist()
    # Many draws: mean and spread of a uniform distribution.
    many = uniforms(1, torch.arange(200000), 0)
    assert abs(many.mean().item() - 0.5) < 0.005 and abs(many.var().item() - 1 / 12) < 0.002
