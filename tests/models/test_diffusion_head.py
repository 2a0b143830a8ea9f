import numpy as np
import torch

from umm_plugin.models.diffusion_head import DiffusionHead, flow_matching_loss, make_scheduler, render_codes
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts, sample_scene
from umm_plugin.worlds.scene import render


def test_trained_head_renders_codes_that_keep_the_evaluators_verdict(vq, tmp_path):
    torch.manual_seed(0)
    head = DiffusionHead(num_codes=vq.num_codes)
    head.set_codebook(vq)
    sched = make_scheduler()
    rng = np.random.default_rng(3)
    train = np.stack([render(sample_scene(m, rng)) for m in make_prompts(256, "train", 3)])
    codes = vq.encode(train)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(15):
        i = torch.randint(len(codes), (32,), generator=gen)
        loss = flow_matching_loss(head, sched, codes[i], vq.decode(codes[i]), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    # the trained parameters moved (the head is not the frozen codebook)
    assert head.transformer.proj_out.weight.abs().sum() > 0

    metas = make_prompts(300, "eval", 4)
    images = np.stack([render(sample_scene(m, rng)) for m in metas])
    rendered = render_codes(head, sched, vq.encode(images), steps=4, generator=torch.Generator().manual_seed(1))
    same = np.mean([evaluate(a, m)[0] == evaluate(b, m)[0] for a, b, m in zip(images, rendered, metas)])
    assert same >= 0.99

    head.save_pretrained(tmp_path)
    again = DiffusionHead.from_pretrained(tmp_path)
    x, s = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9])
    assert torch.allclose(again(x, s, codes[:2]), head(x, s, codes[:2]))


def test_sampling_is_seeded(vq):
    head = DiffusionHead(num_codes=vq.num_codes)
    head.set_codebook(vq)
    codes = torch.randint(0, vq.num_codes, (2, 64), generator=torch.Generator().manual_seed(0))
    a = render_codes(head, make_scheduler(), codes, 3, torch.Generator().manual_seed(7))
    b = render_codes(head, make_scheduler(), codes, 3, torch.Generator().manual_seed(7))
    assert np.array_equal(a, b)
