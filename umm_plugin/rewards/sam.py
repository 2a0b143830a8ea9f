"""SAM's automatic masks as SRUM's region proposer for real images, as the SRUM authors propose regions.

`SamProposer(image) -> boxes` follows SAM's automatic mask generator at one crop: a `points_per_side` x
`points_per_side` grid of single-point prompts over the image, three candidate masks per point, kept when SAM's
predicted IoU reaches `iou_min` and the mask is stable (the share of pixels whose logit clears +1 among those clearing
-1 reaches `stability_min`), each mask's bounding box, boxes overlapping a better-scored one by more than `nms_iou`
dropped, then the largest first, at most k. It runs on `transformers`' `SamModel` / `SamProcessor` (the layout of
`facebook/sam-vit-base`), with the PIL image processor (no torchvision). Like `srum.components_proposer`, it is an
`image -> boxes` function: any detector can take its place.
"""

import numpy as np
import torch

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, end exclusive


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, 4] x [M, 4] boxes (x0, y0, x1, y1) -> [N, M] intersection over union."""
    lo, hi = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter).clamp(min=1e-9)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> list[int]:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = scores.argsort(descending=True).tolist()
    overlap = box_iou(boxes, boxes)
    kept: list[int] = []
    for i in order:
        if all(overlap[i, j] <= iou for j in kept):
            kept.append(i)
    return kept


class SamProposer:
    def __init__(
        self,
        model,
        processor,
        k: int = 5,
        points_per_side: int = 16,
        iou_min: float = 0.88,
        stability_min: float = 0.95,
        nms_iou: float = 0.7,
        min_area: int = 16,
        chunk: int = 64,
    ):
        self.model, self.processor = model.eval(), processor
        self.k, self.points_per_side, self.chunk = k, points_per_side, chunk
        self.iou_min, self.stability_min, self.nms_iou, self.min_area = iou_min, stability_min, nms_iou, min_area

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SamProposer":
        """A SAM checkpoint directory (`SamModel` + `SamProcessor`); `kwargs` set the proposer's thresholds."""
        from transformers import SamModel, SamProcessor

        return cls(SamModel.from_pretrained(path), SamProcessor.from_pretrained(path), **kwargs)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> list[Box]:
        return self.select(*self.masks(image))

    @torch.no_grad()
    def masks(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM on the point grid: (mask logits [points, 3, H, W] at the image's size, predicted IoU [points, 3])."""
        image = np.asarray(image)
        h, w = image.shape[:2]
        n = self.points_per_side
        grid = [[float((i + 0.5) * w / n), float((j + 0.5) * h / n)] for j in range(n) for i in range(n)]
        enc = self.processor(images=[image], input_points=[[[p] for p in grid]], return_tensors="pt")
        device = next(self.model.parameters()).device
        embeddings = self.model.get_image_embeddings(enc.pixel_values.to(device))
        logits, predicted = [], []
        for start in range(0, len(grid), self.chunk):
            points = enc.input_points[:, start : start + self.chunk].to(device)
            out = self.model(image_embeddings=embeddings, input_points=points, multimask_output=True)
            logits.append(
                self.processor.image_processor.post_process_masks(
                    out.pred_masks.cpu(), enc.original_sizes, enc.reshaped_input_sizes, binarize=False
                )[0].float()
            )
            predicted.append(out.iou_scores[0].float().cpu())
        return torch.cat(logits), torch.cat(predicted)

    def select(self, logits: torch.Tensor, predicted: torch.Tensor) -> list[Box]:
        """Boxes of the masks that pass SAM's filters (predicted IoU, stability, area), after non-maximum
        suppression by predicted IoU; largest first, at most k, inside the image."""
        h, w = logits.shape[-2:]
        stability = (logits > 1).sum((-1, -2)) / (logits > -1).sum((-1, -2)).clamp(min=1)
        masks = logits > 0
        keep = (predicted >= self.iou_min) & (stability >= self.stability_min)
        keep &= masks.sum((-1, -2)) >= self.min_area
        boxes, scores = [], []
        for p, c in keep.nonzero().tolist():
            ys, xs = masks[p, c].nonzero(as_tuple=True)
            boxes.append([int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
            scores.append(float(predicted[p, c]))
        if not boxes:
            return []
        kept = [boxes[i] for i in nms(torch.tensor(boxes, dtype=torch.float), torch.tensor(scores), self.nms_iou)]
        kept.sort(key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))  # stable: equal areas keep score order
        return [(max(0, x0), max(0, y0), min(w, x1), min(h, y1)) for x0, y0, x1, y1 in kept[: self.k]]
