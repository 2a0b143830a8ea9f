"""Pretraining the tiny ShapesWorld UMM on CPU: visual tokenizer, AR backbone, diffusion head, in minutes.

Every batch mixes the skills the three recipes need: generation (prompt -> image codes, prompt dropped 10% of the
time for CFG), understanding (image -> caption; a share of them counting drills of one shape, so "four" is said
of four even where no training prompt has four), yes/no judgement ("is this <prompt> ?", SRUM's and R3's
self-judge; `judge_pairs` asks it of one image twice, its prompt and that prompt with one word changed), and R3's
reason (prompt -> <think> plan </think> image), reflect ((prompt, image) -> <think> what is there </think> "no further
edit needed" or an edit) and refine (the reflect conversation continued: edit -> image). Most captions are of
imperfect images (world perturbations, and from 30% of training on the model's own samples), captioned from the
evaluator's parse of what is really there: a judge that only saw clean scenes is blind to junk and gets reward-hacked
(docs/design.md, "Prototype findings"). `gap` sets the generation share of the batch: `weak` gives the GvU paper's
weak base (understanding well ahead of generation), `regular` a stronger generator at the same cost.
"""

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from umm_plugin.models.diffusion_head import flow_matching_loss
from umm_plugin.models.generation import generate_image_tokens
from umm_plugin.models.umm import ASK, DESCRIBE, UMM, ModelError, claim_dir, torch_save_atomically
from umm_plugin.models.visual_tokenizer import PatchVQ
from umm_plugin.worlds.evaluator import check, detect
from umm_plugin.worlds.grammar import (
    MIRROR,
    NUMBERS,
    WORDS,
    PromptError,
    Structure,
    describe,
    make_prompts,
    parse_prompt,
    prompt_pool,
    sample_scene,
)
from umm_plugin.worlds.scene import (
    CANVAS,
    COLOR_NAMES,
    SHAPES,
    free_fragments,
    perturb,
    place,
    random_specs,
    render,
)

NO_EDIT = "no further edit needed"
GAPS = {"weak": 0.25, "regular": 0.5}  # generation share of each batch
MICRO_TOKENS = 1600  # padded tokens per micro-batch (16 rows of a typical 100)
OWN_EVERY = 10  # steps between refreshes of the pool of the model's own samples
CHECKPOINT = "pretrain_checkpoint.pt"  # in --out while the backbone trains; removed once the model is saved


@dataclass
class PretrainConfig:
    """ShapesWorld pretraining of a tiny UMM on CPU: the options of `umm-plugin shapes pretrain`."""

    out: str = field(metadata={"help": "Directory the model is saved to (HF format)."})
    gap: str = field(default="weak", metadata={"help": "weak: understanding well ahead of generation; regular."})
    seed: int = field(default=0, metadata={"help": "Seeds the world, the initialisation and the batches."})
    steps: int = field(default=900, metadata={"help": "Backbone optimisation steps."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per step."})
    lr: float = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW, linear warm-up, cosine decay)."})
    hidden: int = field(default=128, metadata={"help": "Backbone hidden size (Qwen2)."})
    layers: int = field(default=4, metadata={"help": "Backbone layers."})
    r3_share: float = field(
        default=0.1,
        metadata={"help": "Share of each batch for R3's skills: reflect gets half, reason and refine a quarter each."},
    )
    plan_share: float = field(
        default=0.0,
        metadata={
            "help": "Share of each batch for R3's plan alone (prompt -> <think> plan </think>, no image): a reason "
            "row's loss is mostly its image codes, so the weak base's plans barely follow the prompt."
        },
    )
    judge_share: float = field(
        default=0.15, metadata={"help": "Share of each batch for yes/no questions 'is this <prompt> ?'."}
    )
    judge_pairs: float = field(
        default=0.0,
        metadata={
            "help": "Share of the yes/no questions asked in pairs about one image: its own prompt (yes) and that "
            "prompt with one stated word changed (no; the colour or the relation half the time one is stated). "
            "Only these teach the answer to read colours and relations (docs/results.md#judges-fig-8-sensitivity); "
            "0 keeps the earlier bases."
        },
    )
    count_share: float = field(
        default=0.15, metadata={"help": "Share of captions that are counting drills: 1-8 objects of one shape."}
    )
    scene_share: float = field(
        default=0.2,
        metadata={
            "help": "Share of captions that are of random scenes of 1-6 mixed objects (what own samples look like)."
        },
    )
    own_samples_from: float = field(
        default=0.3, metadata={"help": "Fraction of training after which captions also cover the model's samples."}
    )
    imperfect_share: float = field(
        default=0.6, metadata={"help": "Share of captions that are of imperfect images (perturbed or own samples)."}
    )
    own_share: float = field(
        default=0.6, metadata={"help": "Share of imperfect-image captions taken from the model's own samples."}
    )
    head_steps: int = field(default=100, metadata={"help": "Diffusion-head flow-matching steps."})
    tokenizer_scenes: int = field(default=2000, metadata={"help": "Scenes the visual tokenizer's codebook is fit on."})
    threads: int = field(default=0, metadata={"help": "torch threads; 0 keeps torch's default."})
    checkpoint_every: int = field(
        default=100,
        metadata={
            "help": "Backbone steps between checkpoints (pretrain_checkpoint.pt in --out); the same command run again "
            "after a kill resumes from the last one."
        },
    )

    def __post_init__(self):
        if self.gap not in GAPS:
            raise ValueError(f"gap={self.gap!r}: use one of {', '.join(GAPS)}")
        for name in ("steps", "batch_size", "hidden", "layers", "tokenizer_scenes", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in ("own_samples_from", "own_share", "imperfect_share", "judge_pairs"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a fraction in [0, 1]")
        shares = self.r3_share + self.plan_share + self.judge_share
        if min(self.r3_share, self.plan_share, self.judge_share) < 0 or shares >= 1 - GAPS[self.gap]:
            raise ValueError(
                f"r3_share={self.r3_share} + plan_share={self.plan_share} + judge_share={self.judge_share} leaves no "
                "room for generation and captions"
            )
        if min(self.count_share, self.scene_share) < 0 or self.count_share + self.scene_share > 1:
            raise ValueError(f"count_share={self.count_share} + scene_share={self.scene_share} must be in [0, 1]")


def plan_text(objects) -> str:
    """R3's plan for a scene: every object with size, colour, shape and where it goes, in reading order."""
    rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")

    def where(o):
        cx, cy = (o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2
        return rows[min(2, int(3 * cy / CANVAS))], cols[min(2, int(3 * cx / CANVAS))]

    ordered = sorted(objects, key=lambda o: (o.box[1] // 8, o.box[0]))
    parts = [f"a {o.size} {o.color} {o.shape} at {' '.join(where(o))}" for o in ordered]
    return "<think> " + " , ".join(parts) + " </think>"


def edit_pair(meta, objects, rng):
    """(image objects shown to the model, the right reflect answer, the refined objects) for one prompt."""
    kind = ("none", "extra_object", "drop_object", "recolor", "reshape")[rng.integers(5)]
    if kind == "none":
        return objects, NO_EDIT, objects
    bad, _ = perturb(objects, rng, kind)
    if check(meta, bad)[0]:  # the perturbation did not break the prompt: nothing to fix
        return bad, NO_EDIT, bad
    gone = [o for o in objects if o not in bad]
    new = [o for o in bad if o not in objects]
    if kind == "extra_object":
        answer = f"remove a {new[0].color} {new[0].shape}"
    elif kind == "drop_object":
        answer = f"add a {gone[0].color} {gone[0].shape}"
    elif kind == "recolor":
        answer = f"make the {new[0].color} {new[0].shape} {gone[0].color}"
    else:
        answer = f"make the {new[0].color} {new[0].shape} a {gone[0].shape}"
    return bad, answer, objects


class Batcher:
    """Builds (input ids, loss mask) rows for every pretraining task from freshly sampled scenes."""

    def __init__(self, model: UMM, cfg: PretrainConfig, rng: np.random.Generator):
        self.m, self.cfg, self.rng = model, cfg, rng
        self.prompts = make_prompts(20000, "train", cfg.seed)
        self.train_keys = {}  # category -> keys of its training prompts
        self.own = []  # (codes, objects, fragment count, prompt meta, verdict) of the model's own samples, as parsed
        self.too_crowded = 0

    def meta(self):
        return self.prompts[self.rng.integers(len(self.prompts))]

    def codes(self, objects, fragments=()):
        return self.m.vq.encode(render(objects, fragments=fragments)[None])[0]

    def row(self, context, answer):
        """(ids, loss mask): the loss is on the answer, never on an image's <EOL>s. They are fed, not sampled, and
        training on them cut the regular base's generation .253 -> .057 (docs/results.md, "Why did `--gap regular`
        stop generating better?")."""
        eol = self.m.layout.eol
        return context + answer, [0] * len(context) + [int(t != eol) for t in answer]

    def caption_row(self, codes, text):
        return self.row(self.m.chat(codes, DESCRIBE), self.m.ids(text) + [self.m.tokenizer.eos_token_id])

    def generation(self):
        meta = self.meta()
        prompt = "" if self.rng.random() < 0.1 else meta["prompt"]
        codes = self.codes(sample_scene(meta, self.rng))
        return self.row(self.m.generation_prompt(prompt), self.image_answer(codes))

    def image_answer(self, codes):
        return self.m.layout.tokens(codes) + [self.m.layout.eom, self.m.tokenizer.eos_token_id]

    def caption(self, imperfect: bool):
        """A clean scene is captioned by its prompt half the time, else (like imperfect images) by a full listing of
        what is there, with or without colours (the colour-free listing is what teaches counting of any scene), and for
        two groups half the time with where one is relative to the other."""
        u = self.rng.random()
        if u < self.cfg.count_share:
            return self.count_drill()
        if u < self.cfg.count_share + self.cfg.scene_share:
            return self.scene_drill()
        if imperfect and self.own and self.rng.random() < self.cfg.own_share:
            codes, objects, n_fragments, _, _ = self.own[self.rng.integers(len(self.own))]
        else:
            meta = self.meta()
            objects, fragments = sample_scene(meta, self.rng), []
            if imperfect:
                objects, fragments = perturb(objects, self.rng)
            codes, n_fragments = self.codes(objects, fragments), len(fragments)
        if not imperfect and self.rng.random() < 0.5:
            text = meta["prompt"]
        else:
            colors, relate, flip = self.rng.random(3) < 0.5  # half with colours, half stating a relation
            text = describe(objects, n_fragments, colors, relate, flip)
        return self.caption_row(codes, text)

    def count_drill(self):
        """1-8 objects of one shape, one colour or mixed, captioned truthfully (half the time without colours)."""
        n, shape = int(self.rng.integers(1, len(NUMBERS) + 1)), SHAPES[self.rng.integers(len(SHAPES))]
        colors = COLOR_NAMES if self.rng.random() < 0.5 else [COLOR_NAMES[self.rng.integers(len(COLOR_NAMES))]]
        sizes = ("small", "large") if n <= 4 else ("small",)
        pick = self.rng.integers
        specs = [(shape, colors[pick(len(colors))], sizes[pick(len(sizes))]) for _ in range(n)]
        objects = None
        while objects is None:  # crowded layouts may not fit: one object fewer until they do
            objects, specs = place(specs, self.rng, tries=20), specs[:-1]
        text = describe(objects, colors=self.rng.random() < 0.5)
        return self.caption_row(self.codes(objects), text)

    def scene_drill(self):
        """1-6 objects of random shape, colour and size, listed truthfully: a weak generator's own samples hold 3-6
        mixed objects, which no prompt and few perturbations show. (Measured in docs/results.md: it lifts
        understanding of held-out prompts; drills of half-drawn and edge-wrapped shapes did not lift the captions of
        the model's own samples, and were dropped.)"""
        specs, objects = random_specs(self.rng, int(self.rng.integers(1, 7))), None
        while objects is None:
            objects, specs = place(specs, self.rng, tries=20), specs[:-1]
        fragments = free_fragments(objects, self.rng, int(self.rng.integers(1, 3))) if self.rng.random() < 0.2 else []
        colors, relate, flip = self.rng.random(3) < 0.5
        text = describe(objects, len(fragments), colors, relate, flip)
        codes = self.codes(objects, fragments)
        return self.caption_row(codes, text)

    def judge(self):
        """'is this <prompt> ?' -> yes / no, answered by the world's own check. Half the scenes fit the prompt, half
        are broken in a way the prompt can see (a stated colour, a shape, an object too many or too few; for a
        relation, half of the broken ones have it mirrored); a quarter of the questions, once the model has
        samples, are about its own images and the prompts they were made for."""
        if self.own and self.rng.random() < 0.25:
            codes, _, _, meta, ok = self.own[self.rng.integers(len(self.own))]
            return self.yes_no(codes, meta, ok)
        meta = self.meta()
        objects = sample_scene(meta, self.rng)
        if self.rng.random() < 0.5:
            subject = meta["include"][-1]
            if "position" in subject and self.rng.random() < 0.5:
                mirrored = {**subject, "position": [MIRROR[subject["position"][0]], 0]}
                objects = sample_scene({**meta, "include": [meta["include"][0], mirrored]}, self.rng)
            else:
                kinds = ("reshape", "extra_object", "drop_object") + (("recolor",) * 2 if "color" in subject else ())
                objects, _ = perturb(objects, self.rng, kinds[self.rng.integers(len(kinds))])
        return self.yes_no(self.codes(objects), meta, check(meta, objects)[0])

    def judge_pair(self):
        """Two questions about one image: its prompt (yes) and the prompt with one word changed (no). Asked of the
        same image, only the word tells them apart: with the image broken instead, the tiny base learns counts
        and neither colours nor relations (docs/results.md, "Judges")."""
        asked = None
        while asked is None:
            meta = self.meta()
            asked = self.changed_word(meta)
        objects = sample_scene(meta, self.rng)
        codes = self.codes(objects)
        return [self.yes_no(codes, x, check(x, objects)[0]) for x in (meta, asked)]

    def changed_word(self, meta) -> dict | None:
        """`meta`'s prompt with one stated word changed, if the result is a training prompt (never a held-out one:
        the eval split must stay unseen as text too), else None."""
        s = parse_prompt(meta["prompt"])
        groups, relation = list(s.groups), s.relation
        kinds = (
            ["shape", "count"]
            + (["color"] if any(g.color for g in groups) else [])
            + (["relation"] if relation else [])
        )
        kind = kinds[self.rng.integers(len(kinds))]
        hard = [k for k in ("color", "relation") if k in kinds]  # the words the yes/no learns last, counts first
        if hard and self.rng.random() < 0.5:
            kind = hard[self.rng.integers(len(hard))]
        if kind == "relation":
            relation = MIRROR[relation]
        else:
            i = self.rng.choice([i for i, g in enumerate(groups) if kind != "color" or g.color])
            old = getattr(groups[i], kind)
            pool = {"color": COLOR_NAMES, "shape": SHAPES, "count": range(1, len(NUMBERS) + 1)}[kind]
            new = [v for v in pool if v != old]
            groups[i] = replace(groups[i], **{kind: new[self.rng.integers(len(new))]})
        asked = Structure(tuple(groups), relation)
        tag = asked.tag()
        if tag not in self.train_keys:
            self.train_keys[tag] = {x.key() for x in prompt_pool(tag, "train")}
        return asked.meta() if asked.key() in self.train_keys[tag] else None

    def yes_no(self, codes, meta, ok: bool):
        answer = self.m.ids("yes" if ok else "no") + [self.m.tokenizer.eos_token_id]
        return self.row(self.m.chat(codes, ASK.format(prompt=meta["prompt"])), answer)

    def reason(self):
        meta = self.meta()
        objects = sample_scene(meta, self.rng)
        answer = self.m.ids(plan_text(objects)) + self.m.layout.image_prefix() + self.image_answer(self.codes(objects))
        return self.row(self.m.reason_prompt(meta["prompt"]), answer)

    def plan(self):
        meta = self.meta()
        return self.row(self.m.reason_prompt(meta["prompt"]), self.m.ids(plan_text(sample_scene(meta, self.rng))))

    def reflect_turn(self, codes, meta, shown, answer) -> tuple[list[int], list[int]]:
        """(context, answer ids) of R3's reflect turn: the model first says what it sees in a think block (a truthful
        listing of the image), then "no further edit needed" or the edit."""
        text = f"<think> {describe(shown)} </think> {answer}"
        return self.m.reflect_prompt(codes, meta["prompt"]), self.m.ids(text) + [self.m.tokenizer.eos_token_id]

    def reflect_or_refine(self, refine: bool):
        meta = self.meta()
        shown, answer, fixed = edit_pair(meta, sample_scene(meta, self.rng), self.rng)
        if refine and answer == NO_EDIT:  # refine only learns real edits
            return self.reflect_or_refine(refine)
        codes = self.codes(shown)
        context, reflection = self.reflect_turn(codes, meta, shown, answer)
        if not refine:
            return self.row(context, reflection)
        # Refine continues the reflect conversation (the image and the model's own reflection stay in context), so
        # R3's stage-2 trajectory is one sequence whose actions are the reflection and the refined image.
        edit = self.m.refine_turn(self.m.ids(answer), codes)
        return self.row(context + reflection + edit, self.image_answer(self.codes(fixed)))

    def batch(self):
        b, gen = self.cfg.batch_size, GAPS[self.cfg.gap]
        n_gen, n_r3, n_judge = round(b * gen), round(b * self.cfg.r3_share), round(b * self.cfg.judge_share)
        n_plan = round(b * self.cfg.plan_share)
        n_cap = b - n_gen - n_r3 - n_plan - n_judge
        n_pairs = round(n_judge * self.cfg.judge_pairs / 2)
        rows = [self.generation() for _ in range(n_gen)] + [self.judge() for _ in range(n_judge - 2 * n_pairs)]
        rows += [row for _ in range(n_pairs) for row in self.judge_pair()]
        rows += [self.plan() for _ in range(n_plan)]
        rows += [self.caption(imperfect=self.rng.random() < self.cfg.imperfect_share) for _ in range(n_cap)]
        # Reflection is the self-judge of SRUM and R3 (does the image match the prompt, and what is wrong): it gets
        # half the R3 rows; reason and refine also train image output, which the weak gap keeps scarce.
        reflect = lambda: self.reflect_or_refine(False)  # noqa: E731
        r3 = (self.reason, reflect, lambda: self.reflect_or_refine(True), reflect)
        rows += [r3[i % 4]() for i in range(n_r3)]
        return rows

    @torch.no_grad()
    def refresh_own_samples(self, n: int = 32):
        """Caption the model's own current samples truthfully (from the evaluator's parse of the decoded image)."""
        metas = [self.meta() for _ in range(n)]
        codes = generate_image_tokens(
            self.m.backbone, self.m.layout, [self.m.generation_prompt(x["prompt"]) for x in metas]
        )
        images = self.m.vq.decode(codes)
        for c, img, meta in zip(codes, images, metas):
            p = detect(img)
            try:  # the colour-free listing has the largest counts: if it can be said, every caption can
                describe(p.objects, colors=False)
            except PromptError:
                self.too_crowded += 1  # reported at the end of pretraining
                continue
            self.own.append((c, p.objects, p.fragments, meta, check(meta, p.objects)[0]))
        self.own = self.own[-256:]


def micro_batches(rows, budget: int = MICRO_TOKENS) -> list[list]:
    """Rows sorted by length -> consecutive groups of at most `budget` padded tokens. Padding every row to the longest
    costs 2x, and fixed groups of 16 still wasted 19% of the tokens: one refine row (two images) padded its group."""
    parts, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or len(rows[i][0]) * (i + 1 - start) > budget:
            parts.append(rows[start:i])
            start = i
    return parts


def lm_loss(backbone, rows) -> torch.Tensor:
    """Mean over sequences of each sequence's mean next-token loss on its answer tokens (tasks weigh per sample)."""
    n = max(len(r[0]) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    attn, lmask = torch.zeros_like(ids), torch.zeros((len(rows), n), dtype=torch.float)
    for i, (seq, m) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        lmask[i, : len(seq)] = torch.tensor(m, dtype=torch.float)
    logits = backbone(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    w = lmask[:, 1:]
    return ((nll * w).sum(1) / w.sum(1)).mean()


def _resumable(cfg: PretrainConfig) -> dict:
    """The settings a checkpoint must agree on to be resumed (where it is written and how many threads run aside)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "threads")}


def resume(out, cfg: PretrainConfig, bb, opt, sched, rng, batcher) -> int:
    """Restore the backbone phase from `out`'s checkpoint, if any: weights, optimizer, schedule, every random state
    and the own samples; returns the step to continue at (0 without a checkpoint). The log keeps the rows before it.
    The file is pickled by torch.save: load only checkpoints this function's `pretrain` wrote."""
    path = out / CHECKPOINT
    if not path.is_file():
        return 0
    state = torch.load(path, weights_only=False)
    if state["config"] != _resumable(cfg):
        changed = sorted(k for k in state["config"] if state["config"][k] != _resumable(cfg).get(k))
        raise ModelError(
            f"{path} was written by a pretraining with other settings ({', '.join(changed)}): rerun with those, or "
            "pretrain into a new --out"
        )
    bb.load_state_dict(state["backbone"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    batcher.own, batcher.too_crowded = state["own"], state["too_crowded"]
    log = out / "pretrain_log.jsonl"
    rows = [json.loads(r) for r in log.read_text().splitlines()] if log.is_file() else []
    log.write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["part"] == "backbone" and r["step"] <= state["step"])
    )
    return state["step"] + 1


def pretrain(cfg: PretrainConfig, log=print) -> UMM:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    out = claim_dir(cfg.out)  # never into a directory of someone else's files
    t0 = time.time()

    # 1. visual tokenizer, fit on clean and perturbed scenes of the train split
    images = []
    for meta in make_prompts(cfg.tokenizer_scenes, "train", cfg.seed + 1):
        objects = sample_scene(meta, rng)
        images.append(render(objects))
        bad, frags = perturb(objects, rng)
        images.append(render(bad, fragments=frags))
    vq = PatchVQ.fit(np.stack(images))
    model = UMM.build(WORDS, vq, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    log(
        f"visual tokenizer: {vq.num_codes} codes ({time.time() - t0:.0f}s); backbone "
        f"{sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f}M params"
    )

    # 2. backbone
    batcher = Batcher(model, cfg, rng)
    bb = model.backbone.train()
    opt = torch.optim.AdamW(bb.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    start = resume(out, cfg, bb, opt, sched, rng, batcher)
    if start:
        log(f"resumed {out} at backbone step {start}")
    logf = open(out / "pretrain_log.jsonl", "a" if start else "w")
    own_from = int(cfg.steps * cfg.own_samples_from)
    bar = tqdm(range(start, cfg.steps), desc="backbone", mininterval=2, initial=start, total=cfg.steps)
    for step in bar:
        if step >= own_from and (step - own_from) % OWN_EVERY == 0:
            bb.eval()
            batcher.refresh_own_samples()
            bb.train()
        rows = sorted(batcher.batch(), key=lambda r: len(r[0]))
        loss = 0.0
        for part in micro_batches(rows):
            micro = lm_loss(bb, part) * len(part) / len(rows)
            micro.backward()
            loss += micro.item()
        torch.nn.utils.clip_grad_norm_(bb.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        bar.set_postfix(loss=f"{loss:.3f}")
        logf.write(json.dumps({"part": "backbone", "step": step, "loss": loss, "time": time.time() - t0}) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            logf.flush()
            state = dict(config=_resumable(cfg), step=step, backbone=bb.state_dict(), optimizer=opt.state_dict())
            state.update(scheduler=sched.state_dict(), numpy=rng.bit_generator.state, torch=torch.get_rng_state())
            state.update(own=batcher.own, too_crowded=batcher.too_crowded)
            torch_save_atomically(state, out / CHECKPOINT)
    bb.eval()

    # 3. diffusion head: flow matching on codebook renders
    head = model.head.train()
    hopt = torch.optim.AdamW(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in tqdm(range(cfg.head_steps), desc="diffusion head", mininterval=2):
        idx = rng.integers(len(images), size=32)
        codes = vq.encode(np.stack([images[i] for i in idx]))
        loss = flow_matching_loss(head, model.scheduler, codes, vq.decode(codes), generator=gen)
        hopt.zero_grad(set_to_none=True)
        loss.backward()
        hopt.step()
        logf.write(json.dumps({"part": "head", "step": step, "loss": loss.item(), "time": time.time() - t0}) + "\n")
    head.eval()
    logf.close()
    model.save_pretrained(out)
    (out / "pretrain_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    (out / CHECKPOINT).unlink(missing_ok=True)
    log(f"saved {out} after {time.time() - t0:.0f}s ({batcher.too_crowded} own samples too crowded to caption)")
    return model
