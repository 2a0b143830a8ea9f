"""SRUM's self-reward: region proposals, the model's own local and global judgement, and the reward map.

As in the authors' code: a proposer gives boxes (SAM's automatic masks there, largest first, top k), the model's
understanding scores each region s in [-1, 1] and the whole layout g in [-1, 1], and the map is M = 0.5, every box
max(M, (s + 1) / 2), then M * (g + 1) / 2. Where we differ, each is a switch:
- `scorer="prob"` (default) reads p(yes) - p(no) off one teacher-forced pass instead of letting the model write a
  number and parsing it (`scorer="text"`, the authors' way). It has no sampling noise and needs no number words.
- `local_min=True` lets a bad region fall below 0.5 (its own (s + 1) / 2; where boxes overlap, the lowest wins);
  the authors' max never penalises a region, only rewards good ones.
- `assign=True` lets each prompt object claim at most as many regions as the prompt asks for (best score first); a
  region left over scores -1. The authors' best-match score rewards every extra copy of a prompt object, which an
  online policy learns to exploit (measured: 8.6 objects per image after 64 steps, docs/results.md#srum).
- `relation=True` reads a stated relation off the boxes the assignment gave the prompt's two objects (GenEval's box
  rule) and averages it into g: the tiny model's own answers score a relation and its mirror alike.
- `collect_scores` also returns the shares of asked objects found and of regions claimed, which the recipes use to
  scale the background (a missing or an extra object then costs the whole picture).
The tiny ShapesWorld model is pretrained to answer "is this <prompt> ?" with yes or no (from the world's own check,
on clean, broken and its own images); that is the question, yes = "yes", no = "no". A chat VLM swaps `question`,
`yes` and `no`. A region is asked about on its own: the box is cut onto an empty canvas and compared with every
object of the prompt ("a photo of a red circle"); s is the best match, i.e. which prompt object it is and how well
it matches. Positions and counts are the global question's job.
For models of the interface on GenEval-format lines, `geneval_self_judge` asks the same questions through
`model.yes_no` on pixels, the objects taken from the metadata (`geneval_objects`), and any `image -> boxes` proposer
(SAM: `rewards/sam.py`).
"""

import re
from collections import deque

import numpy as np
import torch

from umm_plugin.models.generation import continuation_logprobs, generate_text
from umm_plugin.models.umm import ASK, DESCRIBE
from umm_plugin.worlds.evaluator import relative_position
from umm_plugin.worlds.grammar import Group, Structure, parse_prompt

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, end exclusive
QUESTION = ASK
YES, NO = "yes", "no"
CHUNK = 256  # judge rows per forward pass


def components_proposer(
    image: np.ndarray, k: int = 5, threshold: int = 40, min_area: int = 4, colour_tol: int | None = 96
) -> list[Box]:
    """Boxes of the 8-connected components of non-background pixels (any channel above `threshold`), largest
    first, at most k. Neighbours join only if no channel differs by more than `colour_tol` (None: any colours), so
    touching objects of different colours are two regions: an online policy learned to hide extra objects by drawing
    them touching the asked ones (44 % of its pictures; docs/results.md, "How did the policy hide extra
    objects"). Reads pixels only, never a scene description: any detector `image -> boxes` can replace it."""
    image = np.asarray(image)
    fg = image.max(-1) > threshold
    rgb = image.astype(np.int16).tolist()
    tol = 255 if colour_tol is None else colour_tol
    seen = np.zeros_like(fg)
    found = []
    h, w = fg.shape
    for y0, x0 in zip(*np.nonzero(fg)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, ys, xs = deque([(y0, x0)]), [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for ny in (y - 1, y, y + 1):
                for nx in (x - 1, x, x + 1):
                    if not (0 <= ny < h and 0 <= nx < w and fg[ny, nx]) or seen[ny, nx]:
                        continue
                    if max(abs(a - b) for a, b in zip(rgb[y][x], rgb[ny][nx])) <= tol:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        if len(ys) >= min_area:
            found.append((len(ys), (int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1)))
    found.sort(key=lambda a: -a[0])  # stable: equal areas keep scan order
    return [box for _, box in found[:k]]


def reward_map(
    boxes: list[Box], local: torch.Tensor, g: float, size: int, local_min: bool = False, background: float = 1.0
) -> torch.Tensor:
    """[size, size] map from boxes, their scores s in [-1, 1] and the global score g in [-1, 1]. The background
    is 0.5 * `background`: 1 is the authors' map; the online recipe passes the share of the prompt's objects found
    times the share of regions claimed (`collect_scores`), so a missing and an extra object both cost."""
    if len(boxes) != len(local):
        raise ValueError(f"{len(boxes)} boxes but {len(local)} local scores")
    if not 0 <= background <= 1:
        raise ValueError(f"background {background} must lie in [0, 1]")
    m = torch.full((size, size), 0.5 * background)
    if local_min:
        boxed = torch.full((size, size), float("inf"))
        for (x0, y0, x1, y1), s in zip(boxes, local.tolist()):
            boxed[y0:y1, x0:x1] = boxed[y0:y1, x0:x1].clamp(max=(s + 1) / 2)
        m = torch.where(boxed.isinf(), m, boxed)
    else:
        for (x0, y0, x1, y1), s in zip(boxes, local.tolist()):
            m[y0:y1, x0:x1] = m[y0:y1, x0:x1].clamp(min=(s + 1) / 2)
    return m * (g + 1) / 2


def object_counts(prompt: str) -> dict[str, int]:
    """Each distinct object the prompt asks for, as a single-object prompt, with how many it asks for ("two red
    circles" -> {"a photo of a red circle": 2}): what a region is compared with, and how many regions may claim it."""
    counts: dict[str, int] = {}
    for g in parse_prompt(prompt).groups:
        text = Structure((Group(1, g.shape, g.color, g.size),)).text()
        counts[text] = counts.get(text, 0) + g.count
    return counts


def prompt_objects(prompt: str) -> list[str]:
    return list(object_counts(prompt))


def cut(image: np.ndarray, box: Box) -> np.ndarray:
    """The image with everything outside the box set to background."""
    out = np.zeros_like(image)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = image[y0:y1, x0:x1]
    return out


@torch.no_grad()
def yes_no_scores(model, codes: torch.Tensor, questions: list[str], yes: str = YES, no: str = NO) -> torch.Tensor:
    """p(first answer word in `yes`) - p(first answer word in `no`) for each (image codes, question): [B] in [-1, 1].
    One forward pass per CHUNK rows, reading only the next-token distribution after `<assistant>`."""
    if len(codes) != len(questions):
        raise ValueError(f"{len(codes)} images for {len(questions)} questions")
    chunks = range(0, len(questions), CHUNK)
    return torch.cat([model.yes_no_codes(codes[i : i + CHUNK], questions[i : i + CHUNK], yes, no) for i in chunks])


def parse_verdict(text: str, yes: str = YES, no: str = NO) -> float:
    """The `text` scorer's reading of an answer: a number in [-1, 1] if one is written (a VLM asked for a score),
    else a yes (1) or a no (-1) as the first word. Anything else is an error, never a silent 0."""
    number = re.search(r"-?\d+(?:\.\d+)?", text)
    if number:
        value = float(number.group())
        if not -1 <= value <= 1:
            raise ValueError(f"judge wrote {value} in {text!r}: scores must lie in [-1, 1]")
        return value
    words = text.split()
    if words and words[0] in yes.split():
        return 1.0
    if words and words[0] in no.split():
        return -1.0
    raise ValueError(f"cannot read a verdict from the judge's answer {text!r}: expected a score, {yes!r} or {no!r}")


@torch.no_grad()
def caption_scores(model, codes: torch.Tensor, questions: list[str]) -> torch.Tensor:
    """2 p - 1 with p = exp(mean log p(subject + end | image, describe-instruction)), the subject being what the
    question asks about (the text between "is this" and "?"): how likely the model is to describe the image as
    exactly that. One teacher-forced pass per CHUNK rows (GvU's reward, used as a yes/no)."""
    pre, post = QUESTION.split("{prompt}")
    subjects = [q.removeprefix(pre).removesuffix(post) for q in questions]
    out = []
    for i in range(0, len(subjects), CHUNK):
        prefixes = [model.chat(c, DESCRIBE) for c in codes[i : i + CHUNK]]
        targets = [model.ids(t) + [model.tokenizer.eos_token_id] for t in subjects[i : i + CHUNK]]
        logp, mask = continuation_logprobs(model.backbone, prefixes, targets, pad_id=model.tokenizer.pad_token_id)
        out.append(2 * torch.exp(logp.sum(-1) / mask.sum(-1)) - 1)
    return torch.cat(out).float().cpu()


@torch.no_grad()
def text_scores(model, codes: torch.Tensor, questions: list[str], max_new_tokens: int = 12) -> torch.Tensor:
    """Greedy answers to each question, parsed by `parse_verdict`: [B]."""
    rows = [model.chat(c, q) for c, q in zip(codes, questions, strict=True)]
    vocab = model.layout.image_offset
    eos = model.tokenizer.eos_token_id
    answers = generate_text(model.backbone, rows, max_new_tokens, eos, vocab, pad_id=model.tokenizer.pad_token_id)
    words = [" ".join(model.tokenizer.convert_ids_to_tokens([t for t in a if t != eos])) for a in answers]
    return torch.tensor([parse_verdict(w) for w in words])


def judge_questions(model, images: np.ndarray, prompts: list[str], k: int = 5, proposer=None):
    """Every question SRUM asks about images [N, H, W, 3]: (boxes per image, codes [Q, grid*grid], questions [Q],
    owners [Q]) with owner (image, box index or -1 for the global question, prompt-object index or -1). Each region
    is asked once per prompt object, on the region cut out; the whole image once, against the prompt."""
    proposer = proposer or (lambda image: components_proposer(image, k))
    boxes, codes, questions, owners = [], [], [], []
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        found = list(proposer(image))[:k]
        boxes.append(found)
        objects = prompt_objects(prompt)
        crops = model.vq.encode(np.stack([image] + [cut(image, b) for b in found]))
        codes.append(crops[0])
        questions.append(QUESTION.format(prompt=prompt))
        owners.append((i, -1, -1))
        for b in range(len(found)):
            for j, obj in enumerate(objects):
                codes.append(crops[b + 1])
                questions.append(QUESTION.format(prompt=obj))
                owners.append((i, b, j))
    return boxes, torch.stack(codes), questions, owners


def relation_holds(structure: Structure, boxes: list[Box], claims: list[int]) -> float:
    """+1 if every region claimed by the prompt's first object stands in its relation to every region claimed by the
    second (GenEval's box rule, `relative_position`), else -1 (also when either claimed none)."""
    objects = prompt_objects(structure.text())
    if len(objects) != 2:
        raise ValueError(f"{structure.text()!r} names one object on both sides of its relation: turn relation off")
    a, b = ([box for box, c in zip(boxes, claims) if c == j] for j in (0, 1))
    ok = a and b and all(structure.relation in relative_position(x, y) for x in a for y in b)
    return 1.0 if ok else -1.0


def collect_scores(boxes, owners, values, prompts, assign=False, relation=False):
    """Answers to `judge_questions` -> (local scores per image, global scores [N], found [N], claimed [N]).
    A region's score is its best over the prompt's objects. With `assign` each prompt object claims at most as many
    regions as the prompt asks for (`object_counts`), best score first, and a region left over scores -1; found is
    the share of the asked objects that claimed a region and claimed the share of regions claimed (both 1 without).
    With `relation`, a prompt that states one has g replaced by (g + r) / 2, r = `relation_holds` on the claims: the
    tiny model's own answers cannot tell a relation from its mirror (docs/results.md, "Can a base tell a relation
    from its mirror?"), the boxes can."""
    counts = [list(object_counts(p).values()) for p in prompts]
    local, glob, found, claimed, claims = assign_regions(boxes, owners, values, counts, assign, with_claims=True)
    for i, prompt in enumerate(prompts):
        if relation and (structure := parse_prompt(prompt)).relation:
            glob[i] = (glob[i] + relation_holds(structure, boxes[i], claims[i])) / 2
    return local, glob, found, claimed


def assign_regions(boxes, owners, values, counts, assign=True, with_claims=False):
    """Answers -> (local scores per image, global [N], found [N], claimed [N][, claims]): `collect_scores` without
    the ShapesWorld parse; counts[i] holds how many of each prompt object image i asks for."""
    local = [torch.full((len(b),), -1.0) for b in boxes]
    claims = [[-1] * len(b) for b in boxes]
    glob, found, claimed = torch.zeros(len(boxes)), torch.ones(len(boxes)), torch.ones(len(boxes))
    pairs = []
    for (i, b, j), v in zip(owners, values, strict=True):
        if b < 0:
            glob[i] = v
        else:
            pairs.append((v, i, b, j))
    # Without assign every object may claim every region, so each region takes its best match (the authors' score).
    left = [list(c) if assign else [len(b)] * len(c) for c, b in zip(counts, boxes, strict=True)]
    for v, i, b, j in sorted(pairs, key=lambda p: -p[0]):
        if claims[i][b] < 0 and left[i][j] > 0:
            local[i][b], claims[i][b], left[i][j] = v, j, left[i][j] - 1
    if assign:
        for i in range(len(boxes)):
            found[i] = 1 - sum(left[i]) / max(sum(counts[i]), 1)
            claimed[i] = sum(c >= 0 for c in claims[i]) / len(claims[i]) if claims[i] else 1.0
    return (local, glob, found, claimed, claims) if with_claims else (local, glob, found, claimed)


def self_judge(
    model,
    images: np.ndarray,
    prompts: list[str],
    k: int = 5,
    scorer: str = "prob",
    proposer=None,
    assign=False,
    relation=False,
):
    """The model's own SRUM scores for its images [N, H, W, 3]: (boxes per image, local scores per image [n_boxes],
    global scores [N], found [N], claimed [N]). Every question of the batch is asked in one go; `assign` and
    `relation` as in `collect_scores`."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    boxes, codes, questions, owners = judge_questions(model, images, prompts, k, proposer)
    values = SCORERS[scorer](model, codes, questions).tolist()
    return boxes, *collect_scores(boxes, owners, values, prompts, assign, relation)


SCORERS = {"prob": yes_no_scores, "caption": caption_scores, "text": text_scores}


def geneval_objects(meta: dict) -> dict[str, int]:
    """A GenEval line's objects, each as a single-object subject ("a photo of a red car") with how many the line asks
    for: what a region is compared with, and how many regions may claim it (world-free `object_counts`)."""
    counts: dict[str, int] = {}
    for entry in meta["include"]:
        counts[_subject(entry)] = counts.get(_subject(entry), 0) + entry["count"]
    return counts


def _subject(entry: dict) -> str:
    return f"a photo of a {entry['color'] + ' ' if entry.get('color') else ''}{entry['class']}"


def geneval_questions(images: np.ndarray, metas: list[dict], proposer, k: int, ask: str):
    """Every question SRUM asks about images [N, H, W, 3] on GenEval-format lines: (boxes per image, crops [Q, H, W,
    3], questions [Q], owners [Q]) with owner (image, box index or -1 for a whole-image question, object index or
    -1). A region, cut onto an empty canvas, is asked about each of the line's objects (`geneval_objects`); the whole
    image is asked the line's `yn_question_list`, else `ask` about its prompt."""
    boxes, crops, questions, owners = [], [], [], []
    for i, (image, meta) in enumerate(zip(images, metas, strict=True)):
        found = list(proposer(image))[:k]
        boxes.append(found)
        for q in meta.get("yn_question_list") or [ask.format(prompt=meta["prompt"])]:
            crops.append(image)
            questions.append(q)
            owners.append((i, -1, -1))
        for b, box in enumerate(found):
            for j, subject in enumerate(geneval_objects(meta)):
                crops.append(cut(image, box))
                questions.append(ask.format(prompt=subject))
                owners.append((i, b, j))
    return boxes, np.stack(crops), questions, owners


def geneval_scores(boxes, owners, values, metas: list[dict], assign=True, relation=False):
    """Answers to `geneval_questions` -> (local scores per image, global [N], found [N], claimed [N]) as
    `collect_scores`: g is the mean answer to the whole-image questions; with `relation`, a line whose include
    entry has a `position` [relation, index] has g replaced by (g + r) / 2, r = +1 if every region claimed by that
    object stands in the relation to every region claimed by the referenced one (GenEval's box rule), else -1."""
    glob_sum, glob_n = np.zeros(len(metas)), np.zeros(len(metas))
    regions = []
    for (i, b, j), v in zip(owners, values, strict=True):
        if b < 0:
            glob_sum[i], glob_n[i] = glob_sum[i] + v, glob_n[i] + 1
        else:
            regions.append(((i, b, j), v))
    owners = [(i, -1, -1) for i in range(len(metas))] + [o for o, _ in regions]
    values = list(glob_sum / np.maximum(glob_n, 1)) + [v for _, v in regions]
    counts = [list(geneval_objects(m).values()) for m in metas]
    local, glob, found, claimed, claims = assign_regions(boxes, owners, values, counts, assign, with_claims=True)
    subjects = [list(geneval_objects(m)) for m in metas]
    for i, meta in enumerate(metas):
        stated = [(e, e["position"]) for e in meta["include"] if relation and e.get("position")]
        for entry, (rel, ref) in stated:
            index, other = subjects[i].index(_subject(entry)), subjects[i].index(_subject(meta["include"][ref]))
            a = [box for box, c in zip(boxes[i], claims[i]) if c == index]
            b = [box for box, c in zip(boxes[i], claims[i]) if c == other]
            holds = a and b and all(rel in relative_position(x, y) for x in a for y in b)
            glob[i] = (glob[i] + (1.0 if holds else -1.0)) / 2
    return local, glob, found, claimed


@torch.no_grad()
def geneval_self_judge(
    model, images: np.ndarray, metas: list[dict], proposer, k: int = 5, assign=True, relation=False
):
    """SRUM's scores for any model of the interface on GenEval-format lines, asked through `model.yes_no` on pixels:
    (boxes per image, local scores per image, global [N], found [N], claimed [N]), as `geneval_scores`."""
    boxes, crops, questions, owners = geneval_questions(images, metas, proposer, k, model.ask)
    values = torch.cat(
        [model.yes_no(crops[i : i + CHUNK], questions[i : i + CHUNK]) for i in range(0, len(crops), CHUNK)]
    )
    return boxes, *geneval_scores(boxes, owners, values.tolist(), metas, assign, relation)


def overlay(image: np.ndarray, m: torch.Tensor) -> np.ndarray:
    """The image blended with the map (red = 0, green = 1) for inspection: [H, W, 3] uint8."""
    m = m.clamp(0, 1).numpy()[..., None]
    heat = np.concatenate([1 - m, m, np.zeros_like(m)], -1) * 255
    return (0.5 * np.asarray(image, dtype=np.float32) + 0.5 * heat).astype(np.uint8)
