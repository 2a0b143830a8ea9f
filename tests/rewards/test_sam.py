"""SAM as SRUM's region proposer, on a tiny random `SamModel` saved and reloaded through `from_pretrained` in the
public checkpoint's layout: the automatic-mask boxes come back inside the image, largest first, at most k, and
SAM's own quality filters and non-maximum suppression decide which; and the world-free SRUM judgement on GenEval
metadata gives a reward map higher on the objects a scene places than on its background, for a judge we control."""

import numpy as np
import pytest
import torch

from umm_plugin.rewards.sam import SamProposer, box_iou, nms


def _scene() -> np.ndarray:
    image = np.zeros((48, 40, 3), np.uint8)
    image[4:20, 6:18] = (220, 30, 30)
    image[28:44, 22:36] = (30, 30, 220)
    return image


def test_boxes_are_inside_the_image_largest_first_and_at_most_k(tiny_sam_dir):
    # A random SAM's masks mean nothing, so every quality filter is opened; the contract must hold regardless.
    proposer = SamProposer.from_pretrained(tiny_sam_dir, k=3, points_per_side=4, iou_min=-1e9, stability_min=0)
    boxes = proposer(_scene())
    assert 1 <= len(boxes) <= 3
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= 40 and 0 <= y0 < y1 <= 48
    areas = [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]
    assert areas == sorted(areas, reverse=True)
    overlap = box_iou(torch.tensor(boxes, dtype=torch.float), torch.tensor(boxes, dtype=torch.float))
    assert (overlap.fill_diagonal_(0) <= proposer.nms_iou).all()
    assert proposer(_scene()) == boxes  # deterministic


def _mask(box, inside=5.0, h=48, w=40) -> torch.Tensor:
    m = torch.full((h, w), -5.0)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = inside
    return m


def test_selection_keeps_stable_confident_masks_without_duplicates_largest_first(tiny_sam_dir):
    proposer = SamProposer.from_pretrained(tiny_sam_dir, k=3)  # SAM's own thresholds: IoU .88, stability .95
    red, blue, small = (6, 4, 18, 20), (22, 28, 36, 44), (30, 2, 36, 8)
    logits = torch.stack(
        [
            torch.stack([_mask(red), _mask(red, 0.5), _mask((0, 0, 40, 48))]),  # a good mask, an unstable one
            torch.stack([_mask(blue), _mask((22, 28, 35, 44)), _mask(small)]),  # a near-duplicate of blue
            torch.stack([_mask(small), _mask((0, 0, 1, 1)), _mask(red)]),  # a mask under min_area
        ]
    )
    predicted = torch.tensor([[0.95, 0.99, 0.5], [0.93, 0.90, 0.89], [0.97, 0.99, 0.91]])
    assert proposer.select(logits, predicted) == [blue, red, small]  # by area; the whole image was rated .5
    assert SamProposer.from_pretrained(tiny_sam_dir, k=2).select(logits, predicted) == [blue, red]


def test_quality_filters_drop_what_sam_rates_low(tiny_sam_dir):
    every = SamProposer.from_pretrained(tiny_sam_dir, k=100, points_per_side=4, iou_min=-1e9, stability_min=0)
    strict = SamProposer.from_pretrained(tiny_sam_dir, k=100, points_per_side=4, iou_min=1e9, stability_min=0)
    assert len(every(_scene())) > 0 and strict(_scene()) == []


def test_nms_keeps_the_better_of_two_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float)
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(81 / 100)
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.1]), iou=0.7) == [1, 2]
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.1]), iou=0.9) == [1, 0, 2]


class ColourJudge:
    """A judge we control, in the model interface's shape: yes (+1) when the colour a question names is the colour
    of most of the lit pixels it is shown, else no (-1); a question naming several colours (the layout) gets +0.5."""

    ask = "Is this {prompt}?"
    colours = {"red": 0, "blue": 2}

    def yes_no(self, images, questions):
        out = []
        for image, q in zip(images, questions):
            named = [c for c in self.colours if f" {c} " in q]
            lit = image[image.max(-1) > 40]
            if len(named) != 1:
                out.append(0.5)
            else:
                out.append(1.0 if len(lit) and lit.mean(0).argmax() == self.colours[named[0]] else -1.0)
        return torch.tensor(out)


def test_the_world_free_reward_map_is_higher_on_the_placed_objects(tiny_sam_dir):
    from umm_plugin.algos.srum import pool_to_grid
    from umm_plugin.rewards.srum import components_proposer, geneval_self_judge, reward_map

    meta = {
        "tag": "color_attr",
        "prompt": "a photo of a red car and a blue bench",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bench", "count": 1, "color": "blue"}],
    }
    image = np.zeros((48, 48, 3), np.uint8)
    image[4:20, 6:18] = (220, 30, 30)
    image[28:44, 22:36] = (30, 30, 220)
    boxes, local, glob, found, claimed = geneval_self_judge(ColourJudge(), image[None], [meta], components_proposer)
    assert sorted(boxes[0]) == [(6, 4, 18, 20), (22, 28, 36, 44)] and local[0].tolist() == [1.0, 1.0]
    assert glob.tolist() == [0.5] and found.tolist() == [1.0] and claimed.tolist() == [1.0]
    m = reward_map(boxes[0], local[0], glob[0].item(), 48, background=float(found[0] * claimed[0]))
    on = image.max(-1) > 40
    assert m[torch.from_numpy(on)].min() > m[torch.from_numpy(~on)].max()
    cells = pool_to_grid(m[None], 4)[0]  # Janus would pool onto 24 x 24; here 4 x 4 cells of 12 px
    assert cells.shape == (16,) and cells.max() > cells.min()
    # the same objects in green: the judge says no to both regions, which then get no more than the background
    green = np.where(on[..., None], np.array([30, 220, 30], np.uint8), 0).astype(np.uint8)
    boxes, local, glob, found, claimed = geneval_self_judge(ColourJudge(), green[None], [meta], components_proposer)
    m = reward_map(boxes[0], local[0], glob[0].item(), 48, background=float(found[0] * claimed[0]))
    assert local[0].tolist() == [-1.0, -1.0] and m.max() <= 0.5 * 0.75 + 1e-6
