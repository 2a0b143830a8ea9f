"""The exact ShapesWorld evaluator: pixels -> objects -> GenEval-style verdict per prompt.

Pipeline: snap every pixel to the nearest palette colour, take 4-connected components per colour, drop specks
below `MIN_AREA` pixels (counted as fragments), classify shape by how much of its bounding box a component fills
and size by its longest side. The verdict follows GenEval's `evaluate` on the metadata (include / exclude /
position with GenEval's relative-position rule), with one deliberate difference: a group with a colour (or size)
matches only objects of that colour (size), and a position must hold for *every* matched object, since an exact
world has no detector confidences to pick "the first N" by.
"""

from collections import deque
from dataclasses import dataclass

import numpy as np

from umm_plugin.worlds.scene import COLOR_NAMES, PALETTE

MIN_AREA = 12
LARGE_SIDE = 10  # a component whose longest side reaches this is "large"
POSITION_THRESHOLD = 0.1  # GenEval's value


@dataclass(frozen=True)
class Detected:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1), exclusive end
    area: int


@dataclass(frozen=True)
class Parse:
    objects: tuple[Detected, ...]
    fragments: int  # components below MIN_AREA


def snap(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB (uint8 or float in 0..255) -> [H, W] palette index, 0 = background."""
    # |x - p|^2 = |x|^2 - 2 x.p + |p|^2, and |x|^2 is the same for every p: one [HW, 3] x [3, K] product (exact on
    # uint8 input, whose values are integers well inside float32's range).
    pal = PALETTE.astype(np.float32)
    d = (pal**2).sum(-1) - 2 * image.reshape(-1, 3).astype(np.float32) @ pal.T
    return d.argmin(-1).reshape(image.shape[:2])


def classify(mask: np.ndarray) -> str:
    fill = mask.mean()
    return "square" if fill >= 0.93 else "circle" if fill >= 0.7 else "triangle"


def detect(image: np.ndarray) -> Parse:
    idx = snap(image)
    h, w = idx.shape
    seen = np.zeros_like(idx, dtype=bool)
    objects, fragments = [], 0
    for y0 in range(h):
        for x0 in range(w):
            if idx[y0, x0] == 0 or seen[y0, x0]:
                continue
            c, pixels, queue = idx[y0, x0], [], deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                pixels.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and idx[ny, nx] == c:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            if len(pixels) < MIN_AREA:
                fragments += 1
                continue
            ys, xs = np.array(pixels).T
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            mask = np.zeros((box[3] - box[1], box[2] - box[0]), dtype=bool)
            mask[ys - box[1], xs - box[0]] = True
            size = "large" if max(mask.shape) >= LARGE_SIDE else "small"
            objects.append(Detected(classify(mask), COLOR_NAMES[c - 1], size, box, len(pixels)))
    return Parse(tuple(objects), fragments)


def relative_position(box_a, box_b) -> set[str]:
    """Relations of A to B, GenEval's rule: centre offset shrunk by 10% of the summed sizes, then its direction."""
    a, b = np.array(box_a, dtype=float).reshape(2, 2), np.array(box_b, dtype=float).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = (a[1] - a[0]) + (b[1] - b[0])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def check(meta: dict, objects) -> tuple[bool, list[str]]:
    """GenEval verdict of `objects` (anything with shape/color/size/box) against prompt metadata."""
    reasons, groups = [], []
    for req in meta["include"]:
        found = [
            o
            for o in objects
            if o.shape == req["class"] and req.get("color", o.color) == o.color and req.get("size", o.size) == o.size
        ]
        ok = len(found) >= req["count"]
        if not ok:
            desc = " ".join(v for v in (req.get("size"), req.get("color"), req["class"]) if v)
            reasons.append(f"expected {desc}>={req['count']}, found {len(found)}")
        elif "position" in req:
            rel, target = req["position"]
            if groups[target] is None:
                ok = False
                reasons.append(f"no target for {req['class']} to be {rel}")
            elif not all(rel in relative_position(o.box, t.box) for o in found for t in groups[target]):
                ok = False
                reasons.append(f"expected {req['class']} {rel} target {target}")
        groups.append(found if ok else None)
    for req in meta.get("exclude", []):
        n = sum(o.shape == req["class"] for o in objects)
        if n >= req["count"]:
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return not reasons, reasons


def evaluate(image: np.ndarray, meta: dict) -> tuple[bool, list[str]]:
    return check(meta, detect(image).objects)


def accuracy_table(tags, correct) -> dict:
    """Per-category accuracy, GenEval's `overall` (mean of categories) and the plain mean over samples."""
    by_tag: dict[str, list[bool]] = {}
    for t, c in zip(tags, correct, strict=True):
        by_tag.setdefault(t, []).append(bool(c))
    table = {t: float(np.mean(v)) for t, v in sorted(by_tag.items())}
    table["overall"] = float(np.mean(list(table.values()))) if by_tag else 0.0
    table["micro"] = float(np.mean(correct)) if len(correct) else 0.0
    return table
