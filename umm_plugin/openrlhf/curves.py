"""The reward/accuracy curve of an RL run: one CSV row per evaluation and a PNG plot of it (PIL; no matplotlib)."""

import csv
from pathlib import Path

from PIL import Image, ImageDraw

PLOTTED = {
    "accuracy": "blue",
    "reward": "red",
    "train_reward": "orange",
    "auc": "gray",
    "r3_accuracy_round0": "green",  # R3: the first image, then after the last reflect-refine round
    "r3_accuracy_round4": "purple",
    "r3_reflection_round1": "teal",
}


def append_curve(log_dir: Path, row: dict) -> None:
    """Append `row` to log_dir/curve.csv (rewritten whole when new columns appear) and redraw log_dir/curve.png."""
    path = Path(log_dir) / "curve.csv"
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    _save(log_dir, rows)


def truncate_curve(log_dir: Path, step: int) -> None:
    """Keep only log_dir/curve.csv's rows up to `step` (a resumed run evaluates the later steps again)."""
    path = Path(log_dir) / "curve.csv"
    if path.exists():
        _save(log_dir, [r for r in csv.DictReader(path.open()) if float(r["step"]) <= step])


def _save(log_dir: Path, rows: list[dict]) -> None:
    """Write curve.csv (beside, then renamed) and curve.png."""
    path = Path(log_dir) / "curve.csv"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, columns, restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    if rows:
        plot(rows, Path(log_dir) / "curve.png")


def plot(rows: list[dict], out: Path, size=(640, 360), pad=40) -> None:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    steps = [float(r["step"]) for r in rows]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    w, h = size[0] - 2 * pad, size[1] - 2 * pad
    d.rectangle([pad, pad, pad + w, pad + h], outline="black")
    d.text((4, pad - 6), "1.0", fill="black")
    d.text((4, pad + h - 6), "0.0", fill="black")
    d.text((pad, pad + h + 6), f"step {x0:g}", fill="black")
    d.text((pad + w - 60, pad + h + 6), f"step {x1:g}", fill="black")
    present = [k for k in PLOTTED if any(r.get(k) not in (None, "", "nan") for r in rows)]
    for i, key in enumerate(present):
        colour = PLOTTED[key]
        pts = [
            (pad + w * (float(r["step"]) - x0) / (x1 - x0), pad + h * (1 - min(1.0, max(0.0, float(r[key])))))
            for r in rows
            if r.get(key) not in (None, "", "nan")
        ]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for p in pts:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=colour)
        d.text((4 + (size[0] // 4) * (i % 4), 4 + 12 * (i // 4)), key, fill=colour)
    img.save(out)
