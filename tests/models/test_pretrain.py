import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from umm_plugin.eval import caption_correct
from umm_plugin.models.pretrain import NO_EDIT, Batcher, PretrainConfig, edit_pair, lm_loss, micro_batches, plan_text
from umm_plugin.models.umm import UMM
from umm_plugin.worlds.evaluator import check, detect, evaluate
from umm_plugin.worlds.grammar import MIRROR, WORDS, make_prompts, parse_prompt, prompt_pool, sample_scene
from umm_plugin.worlds.scene import SHAPES


def test_pretrain_runs_every_task_and_saves_a_loadable_model(pretrained_dir):
    log = [json.loads(line) for line in (pretrained_dir / "pretrain_log.jsonl").read_text().splitlines()]
    backbone = [r["loss"] for r in log if r["part"] == "backbone"]
    assert len(backbone) == 40 and np.isfinite(backbone).all()
    assert np.mean(backbone[-5:]) < 0.7 * np.mean(backbone[:5])  # it learns (seeds 0-2: 0.62-0.63)
    assert sum(r["part"] == "head" for r in log) == 5
    model = UMM.from_pretrained(pretrained_dir)
    assert model.backbone.config.hidden_size == 32
    assert json.loads((pretrained_dir / "pretrain_config.json").read_text())["steps"] == 40


@pytest.mark.slow
def test_pretraining_is_the_same_in_every_process(tmp_path):
    # Each process hashes strings with its own seed, so anything that iterates a set of strings can change the
    # batches; a clean machine must get the very base the recorded figures were measured on.
    flags = "--steps 40 --batch-size 32 --hidden 32 --layers 1 --head-steps 5 --tokenizer-scenes 200 --lr 3e-3 "
    flags += "--own-samples-from 0.5"
    files = (
        "model.safetensors",
        "diffusion_head/diffusion_pytorch_model.safetensors",
        "visual_tokenizer/codebook.safetensors",
    )
    weights = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        cmd = [sys.executable, "-m", "umm_plugin.cli", "shapes", "pretrain", "--out", str(out), *flags.split()]
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        weights.append([(out / f).read_bytes() for f in files])
    assert weights[0] == weights[1]


def test_reflect_answers_and_refine_targets_are_right():
    rng = np.random.default_rng(0)
    kinds = set()
    for meta in make_prompts(200, "train", 0):
        objs = sample_scene(meta, rng)
        shown, answer, fixed = edit_pair(meta, objs, rng)
        assert check(meta, fixed)[0]  # the refine target always satisfies the prompt
        assert (answer == NO_EDIT) == check(meta, shown)[0]  # "no edit" exactly when the image is already right
        kinds.add(answer.split()[0])
    assert kinds == {"no", "add", "remove", "make"}


def test_refine_rows_show_the_image_again_one_fixed_distance_before_the_edit(vq):
    # The refine turn repeats the reflected image right before the answer, so each code to keep sits one fixed
    # distance back whatever the reflection's length; the answer is the fixed scene, changed only where the edit is.
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x"), np.random.default_rng(0))
    lay, distances, lengths = model.layout, set(), set()
    for _ in range(30):
        ids, mask = batcher.reflect_or_refine(True)
        starts = [i + 1 for i, t in enumerate(ids) if t == lay.image]  # reflected image, shown again, answer
        answer = slice(starts[2], starts[2] + lay.length)
        assert len(starts) == 3 and sum(mask[: starts[2]]) == 0  # the loss is on the edited image only
        assert mask[answer] == [int(t != lay.eol) for t in ids[answer]]
        shown, again, new = (lay.codes(ids[s : s + lay.length]) for s in starts)
        assert torch.equal(shown, again) and not torch.equal(shown, new)
        assert 0 < (shown != new).sum() < 0.5 * len(new)  # an edit, not a new scene
        distances.add(starts[2] - starts[1])
        lengths.add(starts[1] - starts[0])
    assert len(distances) == 1 and len(lengths) > 3


def _split(model, ids, mask):
    """(image codes, question words, answer words) of a one-image training row."""
    toks = model.tokenizer.convert_ids_to_tokens(ids)
    start, end = toks.index("<IMAGE>") + 1, toks.index("<EOM>")
    codes = model.layout.codes(ids[start:end]).numpy()
    question = toks[end + 1 : toks.index("<assistant>")]
    answer = [t for t, m in zip(toks, mask) if m and t != "<eos>"]
    return codes, question, answer


def test_judge_answers_and_counting_drills_are_the_worlds_truth(vq):
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x"), np.random.default_rng(0))
    agree, yes = [], []
    for _ in range(200):
        codes, question, answer = _split(model, *batcher.judge())
        assert question[:2] == ["is", "this"] and question[-1] == "?" and answer in (["yes"], ["no"])
        meta = parse_prompt(" ".join(question[2:-1])).meta()
        agree.append(evaluate(vq.decode(codes[None])[0], meta)[0] == (answer == ["yes"]))
        yes.append(answer == ["yes"])
    assert np.mean(agree) >= 0.97  # the decoded image's verdict (the tokenizer round trip is >= 99% exact)
    assert 0.3 <= np.mean(yes) <= 0.8
    counts, right = set(), []
    for _ in range(200):
        codes, _, answer = _split(model, *batcher.count_drill())
        objects = detect(vq.decode(codes[None])[0]).objects
        right.append(caption_correct(" ".join(answer), objects))
        counts.add(len(objects))
    assert np.mean(right) >= 0.97 and {1, 2, 3, 4, 5, 6} <= counts


def test_judge_pairs_ask_one_image_its_prompt_and_a_changed_word(vq):
    """Pairs share the image; the first question is its prompt (yes), the second differs in one stated word: one
    colour, count, shape or the relation, never into a held-out prompt, and is answered by the world's check."""
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x", judge_pairs=1.0), np.random.default_rng(0))
    agree = []
    for _ in range(100):
        (codes, q1, a1), (codes2, q2, a2) = (_split(model, *row) for row in batcher.judge_pair())
        assert np.array_equal(codes, codes2) and a1 == ["yes"] and q1 != q2
        meta = parse_prompt(" ".join(q2[2:-1])).meta()
        agree.append(evaluate(vq.decode(codes[None])[0], meta)[0] == (a2 == ["yes"]))
    assert np.mean(agree) >= 0.97
    assert len(batcher.batch()) == batcher.cfg.batch_size
    kinds = []
    for meta in make_prompts(400, "train", 3):
        asked = batcher.changed_word(meta)
        if asked is None:
            continue
        a, b = parse_prompt(meta["prompt"]), parse_prompt(asked["prompt"])
        assert b in prompt_pool(b.tag(), "train") and len(a.groups) == len(b.groups)
        diff = [
            (k, x, y)
            for x, y in zip(a.groups, b.groups)
            for k in ("color", "count", "shape")
            if getattr(x, k) != getattr(y, k)
        ]
        diff += [("relation", a.relation, b.relation)] if a.relation != b.relation else []
        assert len(diff) == 1, (meta["prompt"], asked["prompt"])
        kind, old, new = diff[0]
        assert new != old and (kind != "relation" or new == MIRROR[old])
        kinds.append(kind)
    assert set(kinds) == {"color", "count", "shape", "relation"} and len(kinds) >= 150


def test_scene_drills_list_what_is_drawn(vq):
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x"), np.random.default_rng(0))
    right, counts, shapes = [], set(), set()
    for _ in range(200):
        codes, _, answer = _split(model, *batcher.scene_drill())
        objects = detect(vq.decode(codes[None])[0]).objects
        right.append(caption_correct(" ".join(answer), objects))
        counts.add(len(objects))
        shapes.add(len({o.shape for o in objects}))
    assert np.mean(right) >= 0.97 and {1, 2, 3, 4, 5, 6} <= counts and 3 in shapes  # mixed shapes, up to six


def test_micro_batches_split_by_padded_tokens_and_keep_the_batch_loss(vq):
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x"), np.random.default_rng(0))
    rows = sorted(batcher.batch(), key=lambda r: len(r[0]))
    parts = micro_batches(rows, budget=800)
    assert [r for p in parts for r in p] == rows and len(parts) > 2
    assert all(len(p) == 1 or len(p[-1][0]) * len(p) <= 800 for p in parts)
    eol = model.layout.eol
    assert all(not m for ids, mask in rows for t, m in zip(ids, mask) if t == eol)  # <EOL>s are fed, never trained
    images = [mask for ids, mask in rows if ids[-2:] == [model.layout.eom, model.tokenizer.eos_token_id]]
    assert images and all(sum(mask[-74:]) == 64 + 2 for mask in images)  # an image answer: 64 codes, <EOM>, <eos>
    with torch.no_grad():
        whole = lm_loss(model.backbone, rows)
        split = sum(lm_loss(model.backbone, p) * len(p) / len(rows) for p in parts)
    assert abs(whole.item() - split.item()) < 1e-5


def test_plan_names_every_object_in_reading_order():
    rng = np.random.default_rng(0)
    meta = make_prompts(1, "train", 0, tags=("position_count",))[0]
    objs = sample_scene(meta, rng)
    plan = plan_text(objs)
    assert plan.startswith("<think> ") and plan.endswith(" </think>")
    assert plan.count(" at ") == len(objs)


@pytest.mark.parametrize("share, expected", [(0.0, 0), (0.25, 16)])
def test_plan_rows_are_the_plan_alone_for_the_prompt_asked(vq, share, expected):
    model = UMM.build(WORDS, vq, hidden=32, layers=1)
    batcher = Batcher(model, PretrainConfig(out="x", plan_share=share), np.random.default_rng(0))
    plans = []
    for ids, mask in batcher.batch():
        toks = model.tokenizer.convert_ids_to_tokens(ids)
        answer = [t for t, m in zip(toks, mask) if m]
        if answer[0] == "<think>" and "<SOM>" not in toks:
            plans.append((toks, answer))
    assert len(plans) == expected
    for toks, answer in plans:
        assert answer[-1] == "</think>"
        assert max(model.tokenizer.convert_tokens_to_ids(answer)) < model.layout.image_offset
        prompt = " ".join(toks[toks.index("generate") + 2 : toks.index("<assistant>")])
        wanted = [g.shape for g in parse_prompt(prompt).groups for _ in range(g.count)]
        assert sorted(t for t in answer if t in SHAPES) == sorted(wanted)  # one entry per object the prompt asks for


@pytest.mark.parametrize(
    "bad",
    [
        {"gap": "huge"},
        {"steps": 0},
        {"r3_share": 0.9},
        {"own_share": 1.5},
        {"judge_share": 0.7},
        {"plan_share": -0.1},
        {"r3_share": 0.3, "plan_share": 0.4},
        {"count_share": 0.9},
        {"judge_pairs": 1.5},
    ],
)
def test_config_checks(bad):
    with pytest.raises(ValueError):
        PretrainConfig(out="x", **bad)


@pytest.mark.slow
def test_pretraining_killed_and_run_again_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL after a checkpoint, then the same command: it resumes (weights, optimizer, schedule, every random
    state, own samples) and writes byte-identical weights and the same log as an uninterrupted run."""
    import signal
    import time

    cmd = [sys.executable, "-m", "umm_plugin.cli", "shapes", "pretrain", "--steps", "60", "--batch-size", "8"]
    cmd += ["--hidden", "32", "--layers", "1", "--head-steps", "2", "--tokenizer-scenes", "100", "--threads", "1"]
    cmd += ["--own-samples-from", "0.5", "--checkpoint-every", "10"]
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    killed = subprocess.Popen(
        [*cmd, "--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = tmp_path / "killed" / "pretrain_checkpoint.pt"
    while not checkpoint.exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # killed mid-training
    other = subprocess.run(
        [*cmd[:6], "61", *cmd[7:], "--out", str(tmp_path / "killed")], capture_output=True, text=True
    )
    assert other.returncode == 2 and "written by a pretraining with other settings (steps)" in other.stderr
    again = subprocess.run([*cmd, "--out", str(tmp_path / "killed")], capture_output=True, text=True)
    assert again.returncode == 0 and "resumed" in again.stdout and "at backbone step 10" in again.stdout
    for name in ("model.safetensors", "diffusion_head/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "killed" / name).read_bytes(), name
    rows = [
        [json.loads(r)["step"] for r in (tmp_path / d / "pretrain_log.jsonl").read_text().splitlines()]
        for d in ("whole", "killed")
    ]
    assert rows[0] == rows[1] and not checkpoint.exists()  # the checkpoint goes once the model is saved
