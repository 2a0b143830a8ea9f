"""ShapesWorld scenes: objects, the renderer, the ground-truth sampler and the imperfect-image perturbations.

A scene is a list of `Obj` (shape, colour, size, top-left corner) on a plain black 32x32 canvas. Objects keep a
gap so that every object is exactly one connected component: that is what lets the evaluator be exact. Objects sit
on a 4 px grid (the visual tokenizer's patches), so an object is always the same few codes: a tiny AR model learns
to draw that in CPU minutes, where free placement made generation unlearnable in the budget (measured: 0.05
accuracy after 1000 steps). Junk specks, perturbations and the model's own samples are not aligned.
Ground-truth scenes are drawn by rejection sampling against the evaluator's own symbolic check, so a render of
a sampled scene satisfies its prompt by construction (tests verify this on rendered pixels).
"""

from dataclasses import dataclass, replace
from functools import cache

import numpy as np

CANVAS = 32
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (255, 0, 255),
    "cyan": (0, 255, 255),
}
COLOR_NAMES = tuple(COLORS)
# Index 0 of the palette is the background; colour i (1-based) is COLOR_NAMES[i - 1].
PALETTE = np.array([(0, 0, 0)] + [COLORS[c] for c in COLOR_NAMES], dtype=np.uint8)
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 8, "large": 12}
GAP = 2
ALIGN = 4  # objects sit on the 4 px patch grid of the visual tokenizer; specks (junk) go anywhere


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: int  # left column of the bounding box
    y: int  # top row of the bounding box

    @property
    def px(self) -> int:
        return SIZES[self.size]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive end, pixel units."""
        return (self.x, self.y, self.x + self.px, self.y + self.px)


def shape_mask(shape: str, s: int) -> np.ndarray:
    """Boolean s x s mask of a shape filling its bounding box."""
    c = (np.arange(s) + 0.5) - s / 2
    if shape == "square":
        return np.ones((s, s), dtype=bool)
    if shape == "circle":
        return (c[None, :] ** 2 + c[:, None] ** 2) <= (s / 2) ** 2
    if shape == "triangle":  # apex up: row r is (r + 1) / s of the base width
        half = (np.arange(s)[:, None] + 1) / 2
        return np.abs(c[None, :]) <= half
    raise ValueError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def render(objects, canvas: int = CANVAS, fragments=()) -> np.ndarray:
    """RGB uint8 image [canvas, canvas, 3]. `fragments` are (color, x, y, w, h) specks below the object size."""
    img = np.zeros((canvas, canvas, 3), dtype=np.uint8)
    for o in objects:
        x0, y0, x1, y1 = o.box
        img[y0:y1, x0:x1][shape_mask(o.shape, o.px)] = COLORS[o.color]
    for color, x, y, w, h in fragments:
        img[y : y + h, x : x + w] = COLORS[color]
    return img


def _overlaps(box, boxes, gap: int = GAP) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + gap and b[0] < x1 + gap and y0 < b[3] + gap and b[1] < y1 + gap for b in boxes)


@cache
def _cells(box, canvas: int, grow: int = 0) -> int:
    """The ALIGN-px cells of an on-grid box, grown by `grow` cells each way, as the bits of an int. Two on-grid boxes
    are within GAP (< ALIGN) px of each other exactly when one's cells meet the other's grown by one: `place` tests
    that with one AND per position, not a loop over the boxes (it was half of a pretraining batch's build time)."""
    if any(v % ALIGN for v in box):
        raise ValueError(f"box {box} is off the {ALIGN} px grid: place() lays out on-grid objects only")
    n = canvas // ALIGN
    x0, y0, x1, y1 = (v // ALIGN for v in box)
    bits = 0
    for cy in range(max(0, y0 - grow), min(n, y1 + grow)):
        for cx in range(max(0, x0 - grow), min(n, x1 + grow)):
            bits |= 1 << (cy * n + cx)
    return bits


def place(
    specs, rng: np.random.Generator, canvas: int = CANVAS, accept=None, tries: int = 4000, fixed=(), halves=None
):
    """Lay out (shape, color, size) specs at random positions touching neither each other nor `fixed` objects;
    `accept(objects)` filters layouts. `halves[i]` = (axis, side) keeps spec i in the low (0) or high (1) half of
    the x (0) or y (1) axis, which makes relation prompts cheap to satisfy.
    Returns fixed + new objects, or None when `tries` layouts all failed.
    """
    for _ in range(tries):
        objects = list(fixed)
        for i, (shape, color, size) in enumerate(specs):
            s = SIZES[size]
            lo, hi = [0, 0], [canvas - s + 1] * 2  # top-left corners in [lo, hi) per axis
            if halves is not None:
                axis, side = halves[i]
                lo[axis], hi[axis] = (0, canvas // 2 - s + 1) if side == 0 else (canvas // 2, canvas - s + 1)
            xs, ys = (range(-(-a // ALIGN) * ALIGN, b, ALIGN) for a, b in zip(lo, hi))
            taken = 0
            for o in objects:
                taken |= _cells(o.box, canvas, 1)
            free = [(x, y) for x in xs for y in ys if not _cells((x, y, x + s, y + s), canvas) & taken]
            if not free:
                break
            x, y = free[rng.integers(len(free))]
            objects.append(Obj(shape, color, size, x, y))
        if len(objects) == len(fixed) + len(specs) and (accept is None or accept(objects)):
            return objects
    return None


def random_specs(rng: np.random.Generator, n: int):
    return [
        (SHAPES[rng.integers(len(SHAPES))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))], rng.choice(list(SIZES)))
        for _ in range(n)
    ]


def free_fragments(objects, rng: np.random.Generator, n: int, colors=COLOR_NAMES, canvas: int = CANVAS):
    """n specks of 3-8 px (below the evaluator's minimum object area) that touch no object and no other speck."""
    out, boxes = [], [o.box for o in objects]
    for _ in range(n * 40):
        if len(out) == n:
            break
        w, h = (int(v) for v in rng.integers(1, 5, size=2))
        if not 3 <= w * h <= 8:
            continue
        x, y = int(rng.integers(0, canvas - w + 1)), int(rng.integers(0, canvas - h + 1))
        if not _overlaps((x, y, x + w, y + h), boxes, gap=1):
            out.append((colors[rng.integers(len(colors))], x, y, w, h))
            boxes.append((x, y, x + w, y + h))
    return out


PERTURBATIONS = ("extra_object", "fragments", "recolor", "reshape", "drop_object", "random_scene")


def perturb(objects, rng: np.random.Generator, kind: str | None = None, canvas: int = CANVAS):
    """An imperfect version of a scene, for teaching the understanding branch what junk looks like.

    Returns (objects, fragments); the caption must be written from these, never from the original prompt.
    """
    kind = kind or PERTURBATIONS[rng.integers(len(PERTURBATIONS))]
    objects, fragments = list(objects), []
    if kind == "extra_object":
        objects = place(random_specs(rng, 1), rng, canvas, tries=20, fixed=objects) or objects
    elif kind == "fragments":
        # dict, not set: a set of strings iterates in an order that changes with PYTHONHASHSEED, which made
        # seeded pretraining differ from run to run.
        colors = tuple(dict.fromkeys(o.color for o in objects)) if rng.random() < 0.5 and objects else COLOR_NAMES
        fragments = free_fragments(objects, rng, int(rng.integers(1, 4)), colors, canvas)
    elif kind in ("recolor", "reshape") and objects:
        i = int(rng.integers(len(objects)))
        pool = COLOR_NAMES if kind == "recolor" else SHAPES
        old = objects[i].color if kind == "recolor" else objects[i].shape
        new = [v for v in pool if v != old][rng.integers(len(pool) - 1)]
        objects[i] = replace(objects[i], **({"color": new} if kind == "recolor" else {"shape": new}))
    elif kind == "drop_object" and len(objects) > 1:
        objects.pop(int(rng.integers(len(objects))))
    elif kind == "random_scene":
        objects = place(random_specs(rng, int(rng.integers(1, 5))), rng, canvas) or objects
    return objects, fragments
