from dataclasses import replace
from itertools import product

import numpy as np
import pytest

from umm_plugin.worlds.evaluator import check, detect, evaluate
from umm_plugin.worlds.grammar import (
    MIRROR,
    TAGS,
    PromptError,
    Structure,
    _structures,
    describe,
    load_prompts,
    make_prompts,
    parse_prompt,
    prompt_pool,
    sample_scene,
    save_prompts,
)
from umm_plugin.worlds.scene import CANVAS, COLOR_NAMES, PERTURBATIONS, _overlaps, perturb, place, random_specs, render


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(0)
    metas = make_prompts(1000, "eval", 0) + make_prompts(200, "train", 1)
    return [(m, sample_scene(m, rng)) for m in metas]


def test_evaluator_scores_every_ground_truth_render_correct(scenes):
    assert {m["tag"] for m, _ in scenes} == set(TAGS)
    wrong = [(m["prompt"], evaluate(render(objs), m)[1]) for m, objs in scenes if not evaluate(render(objs), m)[0]]
    assert wrong == []
    # and detection recovers exactly the objects that were drawn
    m, objs = scenes[7]
    found = detect(render(objs))
    assert sorted((o.shape, o.color, o.size, o.box) for o in found.objects) == sorted(
        (o.shape, o.color, o.size, o.box) for o in objs
    )
    assert found.fragments == 0


def _wrong_colour(meta, objs):
    req = next(r for r in meta["include"] if "color" in r)
    i = next(i for i, o in enumerate(objs) if o.shape == req["class"] and o.color == req["color"])
    other = next(c for c in COLOR_NAMES if c != req["color"])
    return objs[:i] + [replace(objs[i], color=other)] + objs[i + 1 :]


def _mirror(objs, axis):
    if axis == "x":
        return [replace(o, x=CANVAS - o.x - o.px) for o in objs]
    return [replace(o, y=CANVAS - o.y - o.px) for o in objs]


def test_evaluator_scores_zero_on_deliberately_wrong_renders(scenes):
    rng = np.random.default_rng(1)
    n = {"colour": 0, "count": 0, "position": 0, "extra": 0}
    for meta, objs in scenes:
        bad = []
        if any("color" in r for r in meta["include"]):
            bad.append(("colour", _wrong_colour(meta, objs)))
        if len(objs) > 1:
            bad.append(("count", objs[1:]))
        rel = next((r["position"][0] for r in meta["include"] if "position" in r), None)
        if rel:
            bad.append(("position", _mirror(objs, "x" if rel in ("left of", "right of") else "y")))
        extra, _ = perturb(objs, rng, "extra_object")
        if len(extra) > len(objs):
            bad.append(("extra", extra))
        for kind, wrong in bad:
            assert not evaluate(render(wrong), meta)[0], (kind, meta["prompt"])
            n[kind] += 1
    assert min(n.values()) >= 100, n


def test_place_keeps_objects_apart_exactly_like_the_box_rule():
    """The cell-bitmask layout allows exactly the positions that testing each box with _overlaps allows."""
    drawn = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        objs = place(random_specs(rng, int(rng.integers(1, 7))), rng, tries=5)
        if objs is None:
            continue
        drawn += 1
        for i, o in enumerate(objs):
            assert not _overlaps(o.box, [b.box for b in objs[:i]])
            assert 0 <= o.x <= CANVAS - o.px and 0 <= o.y <= CANVAS - o.px
    assert drawn > 200
    # every position a small square may take beside a large one, drawn over many seeds, is the reference rule's set
    big = place([("square", "red", "large")], np.random.default_rng(3), tries=1)
    allowed = set()
    for seed in range(400):
        two = place([("square", "blue", "small")], np.random.default_rng(seed), tries=1, fixed=big)
        allowed.add((two[1].x, two[1].y))
    want = {
        (x, y) for x in range(0, 25, 4) for y in range(0, 25, 4) if not _overlaps((x, y, x + 8, y + 8), [big[0].box])
    }
    assert allowed == want


def test_grammar_round_trips_every_prompt_and_tags_it():
    for tag in TAGS:
        for s in _structures(tag):
            assert parse_prompt(s.text()) == s
            assert s.tag() == tag


def test_splits_are_disjoint_and_cover_every_category():
    for tag in TAGS:
        train, held = prompt_pool(tag, "train"), prompt_pool(tag, "eval")
        assert train and held
        assert not {s.key() for s in train} & {s.key() for s in held}
        assert len(train) + len(held) == len(_structures(tag))
    # mirrored relations share a key, so a held-out relation is not seen mirrored in training
    s = parse_prompt("a photo of a circle to the left of a square")
    assert s.key() == parse_prompt("a photo of a square to the right of a circle").key()


def test_paired_pools_keep_a_relation_layout_only_with_its_mirror():
    for tag in TAGS:
        full, paired = prompt_pool(tag, "train"), prompt_pool(tag, "train", paired=True)
        assert set(paired) <= set(full)
        kept = {s.key() for s in paired}
        for s in full:
            mirror = Structure(s.groups[::-1], s.relation).key()
            assert (s in paired) == (not s.relation or mirror in kept), s.text()
        assert (len(paired) < len(full)) == tag.startswith("position"), tag
    # "a circle left of a triangle" is trained, its mirror layout held out: paired sampling never asks for it
    s = parse_prompt("a photo of a circle to the left of a triangle")
    assert s in prompt_pool("position", "train") and s not in prompt_pool("position", "train", paired=True)
    assert Structure(s.groups[::-1], s.relation) in prompt_pool("position", "eval")
    prompts = {m["prompt"] for m in make_prompts(300, "train", 0, tags=("position",), paired=True)}
    assert prompts == {s.text() for s in prompt_pool("position", "train", paired=True)}


def test_sampling_is_seeded():
    assert make_prompts(50, "train", 3) == make_prompts(50, "train", 3)
    m = make_prompts(1, "train", 3)[0]
    assert sample_scene(m, np.random.default_rng(5)) == sample_scene(m, np.random.default_rng(5))


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_captions_of_imperfect_images_are_truthful(kind):
    rng = np.random.default_rng(2)
    for meta in make_prompts(60, "train", 2):
        objs, frags = perturb(sample_scene(meta, rng), rng, kind)
        parse = detect(render(objs, fragments=frags))
        for colors, relate, flip in product((True, False), repeat=3):
            caption = describe(parse.objects, parse.fragments, colors, relate, flip)
            assert check(parse_prompt(caption).meta(), parse.objects)[0], caption
            assert ("with noise" in caption) == (len(frags) > 0)
            assert any(c in caption for c in COLOR_NAMES) == (colors and bool(parse.objects))


@pytest.mark.parametrize(
    "text, msg",
    [
        ("", "empty prompt"),
        ("a photo of a red banana", "unknown word 'banana'"),
        ("a photo of two circle", "plural shape"),
        ("an image of a circle", "unknown word 'an'"),
    ],
)
def test_bad_prompts_are_named(text, msg):
    with pytest.raises(PromptError, match=msg):
        parse_prompt(text)


def test_prompt_files_round_trip_and_errors_name_file_and_line(tmp_path):
    metas = make_prompts(20, "eval", 0)
    path = tmp_path / "p.jsonl"
    save_prompts(path, metas)
    assert load_prompts(path) == metas
    lines = path.read_text().splitlines()
    for bad, msg in [
        ("", "p.jsonl:2: empty line"),
        ("{not json", "p.jsonl:2: not valid JSON"),
        ('{"prompt": "a photo of a circle"}', "p.jsonl:2: include: missing"),
        ('{"prompt": "a photo of a dog", "include": [{"class": "circle", "count": 1}]}', 'p.jsonl:2: prompt: .*"dog"'),
        ('{"prompt": "a photo of a circle", "include": [{"class": "dog", "count": 1}]}', r"2: include\[0\].class"),
    ]:
        path.write_text("\n".join([lines[0], bad, lines[2]]) + "\n")
        with pytest.raises(PromptError, match=msg):
            load_prompts(path)


def test_relational_captions_say_where_position_scenes_put_things():
    rng, two_groups = np.random.default_rng(4), 0
    for meta in make_prompts(200, "train", 4, tags=("position", "position_count")):
        objs = sample_scene(meta, rng)
        for flip in (False, True):
            caption = parse_prompt(describe(objs, relate=True, flip=flip))
            assert check(caption.meta(), objs)[0]
            if len(caption.groups) == 2:  # a position scene's two groups always stand in a clear relation
                two_groups += 1
                assert not check(replace(caption, relation=MIRROR[caption.relation]).meta(), objs)[0]
    assert two_groups >= 200  # the rest are three or more colour groups (e.g. "two circles" of two colours)
    assert parse_prompt(describe(objs)).relation is None  # only when asked


def test_describe_refuses_counts_the_grammar_cannot_say():
    from umm_plugin.worlds.scene import Obj

    crowd = [Obj("square", "red", "small", 0, 0)] * 9
    with pytest.raises(PromptError, match="grammar counts to 8"):
        describe(crowd)
    assert describe(crowd[:8]) == "a photo of eight red squares"
