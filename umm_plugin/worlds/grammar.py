"""ShapesWorld prompts: the grammar, GenEval-format metadata, train/eval splits, captions and prompt files.

Every prompt is a structure (groups, relation) rendered to text; `parse_prompt` inverts the text back to the same
structure, so prompt text and metadata never disagree. Metadata follows GenEval's format with two additions that
the format allows: an optional `size` in include entries (GenEval++'s position/size category), and `exclude`
entries for every shape so that a scene must hold exactly the objects the prompt names (GenEval itself only
excludes extra objects for counting prompts; in a world with no background clutter, extra objects are errors).
"""

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from itertools import permutations, product
from pathlib import Path

import numpy as np

from umm_plugin.worlds.evaluator import check, relative_position
from umm_plugin.worlds.geneval import PromptError, load_geneval, shorten
from umm_plugin.worlds.scene import COLOR_NAMES, SHAPES, SIZES, place

NUMBERS = ("a", "two", "three", "four", "five", "six", "seven", "eight")
RELATIONS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
TAGS = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
    "multi_count",
    "color_count",
    "position_count",
    "position_size",
)
WORDS = tuple(
    dict.fromkeys(
        "a photo of nothing , and with noise to the".split()
        + list(NUMBERS)
        + " ".join(RELATIONS.values()).split()
        + list(SIZES)
        + list(COLOR_NAMES)
        + list(SHAPES)
        + [s + "s" for s in SHAPES]
    )
)
EVAL_EVERY = 5  # one structure in five (per category) is held out for evaluation


@dataclass(frozen=True)
class Group:
    count: int
    shape: str
    color: str | None = None
    size: str | None = None

    def text(self) -> str:
        noun = self.shape if self.count == 1 else self.shape + "s"
        return " ".join(w for w in (NUMBERS[self.count - 1], self.size, self.color, noun) if w)

    def entry(self) -> dict:
        e = {"class": self.shape, "count": self.count}
        e.update({k: v for k, v in (("color", self.color), ("size", self.size)) if v})
        return e


@dataclass(frozen=True)
class Structure:
    groups: tuple[Group, ...]
    relation: str | None = None  # groups[0] <relation> groups[1]
    noise: bool = False

    def text(self) -> str:
        if not self.groups:
            body = "nothing"
        elif self.relation:
            body = f"{self.groups[0].text()} {RELATIONS[self.relation]} {self.groups[1].text()}"
        else:
            body = " , ".join(g.text() for g in self.groups[:-1])
            body = f"{body} and {self.groups[-1].text()}" if body else self.groups[-1].text()
        return f"a photo of {body}" + (" with noise" if self.noise else "")

    def tag(self) -> str:
        g = self.groups
        counted = any(x.count > 1 for x in g)
        colored = any(x.color for x in g)
        if self.noise or len(g) not in (1, 2):
            return "scene"
        if self.relation:
            return "position_size" if any(x.size for x in g) else "position_count" if counted else "position"
        if len(g) == 1:
            return (
                ("color_count" if colored else "counting") if counted else ("colors" if colored else "single_object")
            )
        if counted:
            return "color_count" if colored else "multi_count"
        return "color_attr" if colored else "two_object"

    def meta(self) -> dict:
        if self.relation:  # GenEval lists the referent first and points the subject at it
            include = [self.groups[1].entry(), {**self.groups[0].entry(), "position": [self.relation, 0]}]
        else:
            include = [g.entry() for g in self.groups]
        totals = {s: sum(g.count for g in self.groups if g.shape == s) for s in SHAPES}
        exclude = [{"class": s, "count": n + 1} for s, n in totals.items()]
        return {"tag": self.tag(), "include": include, "exclude": exclude, "prompt": self.text()}

    def key(self) -> str:
        """Same key for a prompt and its mirror ("A left of B" == "B right of A"), so splits keep them together."""
        if self.relation in ("right of", "below"):
            return repr((self.groups[1], MIRROR[self.relation], self.groups[0]))
        if self.relation:
            return repr((self.groups[0], self.relation, self.groups[1]))
        return repr(tuple(sorted(self.groups, key=repr)))


def parse_prompt(text: str) -> Structure:
    words = text.split()
    if not words:
        raise PromptError("empty prompt: write one like 'a photo of a red circle'")
    unknown = [w for w in words if w not in WORDS]
    if unknown:
        raise PromptError(f"unknown word {unknown[0]!r} in prompt {text!r}; ShapesWorld knows: {' '.join(WORDS)}")
    pos = 3
    if words[:3] != ["a", "photo", "of"]:
        raise PromptError(f"prompt {text!r} must start with 'a photo of'")

    def fail(what):
        raise PromptError(f"cannot read prompt {text!r}: expected {what} at word {pos + 1}")

    def group():
        nonlocal pos
        if pos >= len(words) or words[pos] not in NUMBERS:
            fail("a number ('a', 'two', ...)")
        count, pos = NUMBERS.index(words[pos]) + 1, pos + 1
        size = color = None
        if pos < len(words) and words[pos] in SIZES:
            size, pos = words[pos], pos + 1
        if pos < len(words) and words[pos] in COLOR_NAMES:
            color, pos = words[pos], pos + 1
        noun = words[pos] if pos < len(words) else ""
        shape = noun if count == 1 else noun[:-1] if noun.endswith("s") else ""
        if shape not in SHAPES:
            fail("a singular shape" if count == 1 else "a plural shape")
        pos += 1
        return Group(count, shape, color, size)

    groups, relation = [], None
    if words[pos : pos + 1] == ["nothing"]:
        pos += 1
    else:
        groups.append(group())
        rel = next((r for r, t in RELATIONS.items() if words[pos : pos + len(t.split())] == t.split()), None)
        if rel:
            relation, pos = rel, pos + len(RELATIONS[rel].split())
            groups.append(group())
        else:
            while pos < len(words) and words[pos] in (",", "and"):
                last, pos = words[pos] == "and", pos + 1
                groups.append(group())
                if last:
                    break
    noise = words[pos:] == ["with", "noise"]
    if not noise and pos != len(words):
        fail("the end of the prompt")
    return Structure(tuple(groups), relation, noise)


def _structures(tag: str):
    pairs = list(permutations(SHAPES, 2))
    counts2 = [(a, b) for a in range(1, 4) for b in range(1, 4) if a + b <= 4 and max(a, b) > 1]
    if tag == "single_object":
        return [Structure((Group(1, s),)) for s in SHAPES]
    if tag == "two_object":
        return [Structure((Group(1, a), Group(1, b))) for a, b in pairs]
    if tag == "counting":
        return [Structure((Group(n, s),)) for s in SHAPES for n in (2, 3, 4)]
    if tag == "colors":
        return [Structure((Group(1, s, c),)) for s in SHAPES for c in COLOR_NAMES]
    if tag == "position":
        return [Structure((Group(1, a), Group(1, b)), r) for a, b in pairs for r in RELATIONS]
    if tag == "color_attr":
        return [
            Structure((Group(1, a, ca), Group(1, b, cb))) for a, b in pairs for ca, cb in permutations(COLOR_NAMES, 2)
        ]
    if tag == "multi_count":
        return [Structure((Group(m, a), Group(n, b))) for a, b in pairs for m, n in counts2]
    if tag == "color_count":
        one = [Structure((Group(n, s, c),)) for s in SHAPES for c in COLOR_NAMES for n in (2, 3, 4)]
        two = [
            Structure((Group(m, a, ca), Group(n, b, cb)))
            for a, b in pairs
            for ca, cb in product(COLOR_NAMES, repeat=2)
            for m, n in counts2
        ]
        return one + two
    if tag == "position_count":
        return [
            Structure((Group(m, a), Group(n, b)), r)
            for a, b in pairs
            for r in RELATIONS
            for m, n in ((2, 1), (3, 1), (1, 2))
        ]
    if tag == "position_size":
        return [
            Structure((Group(1, a, size=sa), Group(1, b, size=sb)), r)
            for a, b in pairs
            for r in RELATIONS
            for sa, sb in product(SIZES, repeat=2)
        ]
    raise PromptError(f"unknown category {tag!r}; known: {', '.join(TAGS)}")


@cache
def prompt_pool(tag: str, split: str, paired: bool = False) -> tuple[Structure, ...]:
    """The structures of one category in one split. Splits are disjoint by `Structure.key`, fixed for all seeds.

    paired: keep a relation structure only if its mirror layout (the two groups swapped, same relation) is in the
    split too, so that a reward for the relation can only be earned by reading its word: a pair trained in one
    arrangement pays for that arrangement whatever the word says (docs/results.md, "Why is held-out position the
    hard one?").
    """
    if split not in ("train", "eval"):
        raise PromptError(f"unknown split {split!r}: use 'train' or 'eval'")
    structs = _structures(tag)
    keys = sorted({s.key() for s in structs}, key=lambda k: hashlib.md5(k.encode()).hexdigest())
    held = {k for i, k in enumerate(keys) if i % EVAL_EVERY == 0}
    pool = tuple(s for s in structs if (s.key() in held) == (split == "eval"))
    if paired:
        keys = {s.key() for s in pool}
        pool = tuple(s for s in pool if not s.relation or Structure(s.groups[::-1], s.relation).key() in keys)
    return pool


def make_prompts(n: int, split: str, seed: int, tags=TAGS, paired: bool = False) -> list[dict]:
    """n metadata records cycling through `tags`, each drawn uniformly from that category's split (see `prompt_pool`
    for `paired`)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pool = prompt_pool(tags[i % len(tags)], split, paired)
        out.append(pool[rng.integers(len(pool))].meta())
    return out


def sample_scene(meta: dict, rng: np.random.Generator):
    """Objects that satisfy `meta` exactly (checked symbolically); unspecified colours and sizes are random."""
    for small_only, tries in ((False, 100), (True, 4000)):  # crowded prompts only fit with small objects
        specs = [
            (
                req["class"],
                req.get("color") or COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
                req.get("size") or ("small" if small_only else rng.choice(list(SIZES))),
            )
            for req in meta["include"]
            for _ in range(req["count"])
        ]
        halves = None
        if any("position" in req for req in meta["include"]):  # subject in one half, referent in the other
            axis, side = {"left of": (0, 0), "right of": (0, 1), "above": (1, 0), "below": (1, 1)}[
                meta["include"][1]["position"][0]
            ]
            halves = [
                (axis, side if "position" in req else 1 - side) for req in meta["include"] for _ in range(req["count"])
            ]
        objects = place(specs, rng, accept=lambda objs: check(meta, objs)[0], tries=tries, halves=halves)
        if objects is not None:
            return objects
    raise PromptError(f"no ShapesWorld scene fits prompt {meta['prompt']!r}")


def describe(objects, fragments: int = 0, colors: bool = True, relate: bool = False, flip: bool = False) -> str:
    """A truthful caption of what is in an image (from the evaluator's parse): every object, grouped by shape (and
    colour, with `colors`) in a fixed order, plus 'with noise' when specks are present. With `relate`, two groups
    that stand in a relation (every object of one to every object of the other, GenEval's rule) are said as a
    position prompt says them, 'A <relation> B' (B first with `flip`), so that captioning can teach where things are
    (measured in docs/results.md: on the tiny base it barely does; a caption-likelihood judge still scores a
    relation and its mirror nearly alike)."""
    counts: dict[tuple[str, str | None], int] = {}
    for o in objects:
        key = (o.shape, o.color if colors else None)
        counts[key] = counts.get(key, 0) + 1
    order = sorted(counts, key=lambda k: (SHAPES.index(k[0]), COLOR_NAMES.index(k[1]) if k[1] else 0))
    if max(counts.values(), default=0) > len(NUMBERS):
        raise PromptError(f"cannot caption {max(counts.values())} alike objects: the grammar counts to {len(NUMBERS)}")
    groups = tuple(Group(counts[k], k[0], k[1]) for k in order)
    relation = None
    if relate and len(groups) == 2:
        if flip:
            order, groups = order[::-1], groups[::-1]
        members = [[o for o in objects if (o.shape, o.color if colors else None) == k] for k in order]
        held = set.intersection(*(relative_position(a.box, b.box) for a in members[0] for b in members[1]))
        relation = next((r for r in RELATIONS if r in held), None)  # left/right before above/below, when diagonal
    return Structure(groups, relation, noise=fragments > 0).text()


def load_prompts(path) -> list[dict]:
    """Read a GenEval-format JSONL prompt file for ShapesWorld, checking every line; errors name file, line, field.

    The structure of each line is checked as for any model (`geneval.load_geneval`), then its vocabulary: every
    class a ShapesWorld shape and every prompt word a ShapesWorld word. A missing tag is read off the prompt.
    """

    def unknown(field: str, what: str, known) -> PromptError:
        return PromptError(
            f"{field}: unknown {what}; ShapesWorld models only know their own words ({' '.join(known)}); "
            "for real models read GenEval files with umm_plugin.worlds.geneval.load_geneval"
        )

    def vocabulary(rec: dict) -> None:
        for key in ("include", "exclude"):
            for i, req in enumerate(rec[key]):
                if req["class"] not in SHAPES:
                    raise unknown(f"{key}[{i}].class", f"class {shorten(req['class'])}", SHAPES)
        text = rec["prompt"]
        words = [w for w in text.split() if w not in WORDS]
        if words:
            raise unknown("prompt", f"word {shorten(words[0])}", WORDS)
        try:
            structure = parse_prompt(text)
        except PromptError as e:  # every word is known and short, so only the quoted prompt can be long
            raise PromptError(f"prompt: {str(e).replace(repr(text), shorten(text))}") from None
        rec.setdefault("tag", structure.tag())

    return load_geneval(path, vocabulary, require_tag=False)


def save_prompts(path, metas) -> None:
    Path(path).write_text("".join(json.dumps(m) + "\n" for m in metas))
