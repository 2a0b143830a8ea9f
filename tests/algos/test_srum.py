import copy

import torch

from umm_plugin.algos.srum import dense_group_advantages, pool_to_grid, srum_flow_loss, srum_token_loss
from umm_plugin.models.diffusion_head import flow_matching_loss, make_scheduler, to_pixels


def test_weighted_flow_loss_equals_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    v, noise, x, x_ref = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    w = torch.rand(2, 1, 4, 4, generator=g)
    want = 0.0
    for b in range(2):  # per pixel and channel, the way the formula reads
        for c in range(3):
            for i in range(4):
                for j in range(4):
                    want += w[b, 0, i, j] * (v[b, c, i, j] - noise[b, c, i, j] + x[b, c, i, j]) ** 2
                    want += 0.5 * (v[b, c, i, j] - noise[b, c, i, j] + x_ref[b, c, i, j]) ** 2
    torch.testing.assert_close(srum_flow_loss(v, noise, x, w, 0.5, x_ref), want / 96, rtol=1e-6, atol=0)


def test_unit_map_without_reference_term_is_plain_flow_matching(tiny_umm):
    head, sched = copy.deepcopy(tiny_umm.head), make_scheduler()
    torch.nn.init.normal_(head.transformer.proj_out.weight, std=0.02)  # a head that predicts something non-trivial
    codes = torch.randint(0, tiny_umm.vq.num_codes, (2, 64), generator=torch.Generator().manual_seed(1))
    images = tiny_umm.vq.decode(codes)
    plain = flow_matching_loss(head, sched, codes, images, torch.Generator().manual_seed(2))

    # the same draws of noise and sigma, fed through srum_flow_loss with M = 1, lambda = 0
    gen = torch.Generator().manual_seed(2)
    x = to_pixels(images)
    noise = torch.randn(x.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(len(x), generator=gen))[:, None, None, None]
    v = head((1 - sigma) * x + sigma * noise, sigma.flatten(), codes)
    ours = srum_flow_loss(v, noise, x, torch.ones(2, 1, 32, 32), lam=0.0)
    torch.testing.assert_close(ours, plain)


def test_token_loss_weights_each_token():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.125, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).float()
    w = torch.tensor([[1.0, 0.0, 0.5], [0.5, 9.0, 9.0]])
    ln2 = torch.log(torch.tensor(2.0))
    weighted = (1 * ln2 + 0 * 2 * ln2 + 0.5 * 0 + 0.5 * 3 * ln2) / 4
    plain = (ln2 + 2 * ln2 + 0 + 3 * ln2) / 4
    torch.testing.assert_close(srum_token_loss(logp, mask, w, 0.5), weighted + 0.5 * plain)


def test_pool_to_grid_averages_cells_in_code_order():
    m = torch.zeros(1, 4, 4)
    m[0, 0:2, 2:4] = 1.0  # top-right cell of a 2 x 2 grid
    m[0, 2, 0] = 0.4  # one pixel of the bottom-left cell
    torch.testing.assert_close(pool_to_grid(m, 2), torch.tensor([[0.0, 1.0, 0.1, 0.0]]))


def test_dense_advantages_per_position_and_per_sample():
    r = torch.tensor([[[1.0, 0.5], [0.0, 0.5], [0.5, 0.5]]])  # P=1, G=3, L=2; cell 1 equal across the group
    adv = dense_group_advantages(r, per="position", eps=0.0)
    torch.testing.assert_close(adv, torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]]))
    flat = r.flatten()
    want = (r - flat.mean()) / (flat.std() + 1e-4)
    torch.testing.assert_close(dense_group_advantages(r, per="sample"), want)


def test_the_picture_term_adds_each_samples_advantage_of_its_mean_to_every_token():
    r = torch.tensor([[[1.0, 0.5], [0.0, 0.5], [0.5, 0.5]]])  # picture means .75, .25, .5: std .25, z = 1, -1, 0
    adv = dense_group_advantages(r, per="position", eps=0.0, picture=0.5)
    torch.testing.assert_close(adv, torch.tensor([[[1.5, 0.5], [-1.5, -0.5], [0.0, 0.0]]]))
    # off the mask nothing is added; equal means add nothing
    m = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]])
    means = torch.tensor([1.0, 0.25, 0.5])
    z = (means - means.mean()) / means.std()
    want = dense_group_advantages(r, m, per="position", eps=0.0) + 0.5 * z[None, :, None] * m
    torch.testing.assert_close(dense_group_advantages(r, m, per="position", eps=0.0, picture=0.5), want)
    assert want[0, 0, 1] == 0
    same = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(
        dense_group_advantages(same, per="position", eps=0.0, picture=1.0),
        dense_group_advantages(same, per="position", eps=0.0),
    )


def test_dense_advantages_ignore_tokens_off_the_mask():
    r = torch.tensor([[[9.0, 1.0, 2.0], [-9.0, 0.0, 4.0]]])  # token 0 is a prompt token: not counted
    m = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]])
    on = torch.tensor([1.0, 2.0, 0.0, 4.0])  # the counted cells of the group
    want = torch.zeros(1, 2, 3)
    want[0, :, 1:] = (r[0, :, 1:] - on.mean()) / (on.std() + 1e-4)
    torch.testing.assert_close(dense_group_advantages(r, m, per="sample"), want)
    pos = dense_group_advantages(r, m, per="position", eps=0.0)
    s = torch.tensor([1.0, 0.0]).std()
    torch.testing.assert_close(pos[0, :, 1], torch.tensor([0.5, -0.5]) / s)
    assert pos[0, :, 0].abs().sum() == 0
