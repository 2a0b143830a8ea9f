import numpy as np
import torch

from umm_plugin.models.visual_tokenizer import PatchVQ
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts, sample_scene
from umm_plugin.worlds.scene import render


def test_round_trip_keeps_the_evaluators_verdict_on_99_percent_of_1000_scenes(vq):
    rng = np.random.default_rng(11)
    metas = make_prompts(1000, "eval", 11)
    images = np.stack([render(sample_scene(m, rng)) for m in metas])
    codes = vq.encode(images)
    assert codes.shape == (1000, 64) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < vq.num_codes
    back = vq.decode(codes)
    same = np.mean([evaluate(a, m)[0] == evaluate(b, m)[0] for a, b, m in zip(images, back, metas)])
    assert same >= 0.99
    # a decoded image is a fixed point: encoding it again gives the same codes
    assert torch.equal(vq.encode(back), codes)


def test_empty_canvas_is_code_zero_and_save_load_is_exact(vq, tmp_path):
    assert vq.encode(np.zeros((1, 32, 32, 3), np.uint8)).eq(0).all()
    vq.save_pretrained(tmp_path)
    again = PatchVQ.from_pretrained(tmp_path)
    codes = torch.randint(0, vq.num_codes, (4, 64), generator=torch.Generator().manual_seed(0))
    assert np.array_equal(again.decode(codes), vq.decode(codes))
    assert again.num_codes == vq.num_codes == 1 + 6 * 64
