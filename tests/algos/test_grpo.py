import pytest
import torch

from umm_plugin.algos.grpo import group_advantages


def test_group_advantages_match_gvu_formula_and_zero_variance_groups_are_zero():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 8, generator=g, dtype=torch.float64)
    r[2] = 0.37  # a group with no signal
    adv, flat = group_advantages(r, eps=1e-4)
    for i in (0, 1, 3, 4):  # GvU: (r - mean) / (std + 1e-4), per group, unbiased std
        row = r[i]
        ref = [(x - row.mean()) / (row.std() + 1e-4) for x in row]
        assert torch.allclose(adv[i], torch.stack(ref), atol=1e-12)
    assert torch.equal(adv[2], torch.zeros(8, dtype=torch.float64))
    assert flat.sum().item() == 8 and flat[2].all()
    assert torch.allclose(adv[[0, 1, 3, 4]].mean(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([[0.1, float("nan")]]))
    with pytest.raises(ValueError, match="group >= 2"):
        group_advantages(torch.ones(4, 1))
