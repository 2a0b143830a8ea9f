import torch

from umm_plugin.eval import generate_images, shapes_rollout_stats

PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


def test_min_p_near_one_samples_the_argmax(tiny_umm):
    greedy, _ = generate_images(tiny_umm, PROMPTS, temperature=0.0, seed=0)
    sharp, _ = generate_images(tiny_umm, PROMPTS, temperature=1.0, seed=1, min_p=0.999)
    plain, _ = generate_images(tiny_umm, PROMPTS, temperature=1.0, seed=1)
    assert torch.equal(greedy, sharp) and not torch.equal(greedy, plain)


def test_rollout_stats_are_fractions_and_the_images_follow_the_prompts(tiny_umm):
    stats, images = shapes_rollout_stats(tiny_umm, 12, include_eos=True, min_p=0.03)
    assert set(stats) == {"accuracy", "reward", "auc", "objects_per_image", "extra_object_rate"}
    assert 0 <= stats["accuracy"] <= 1 and 0 < stats["reward"] <= 1 and 0 <= stats["extra_object_rate"] <= 1
    assert images.shape == (12, 32, 32, 3)
