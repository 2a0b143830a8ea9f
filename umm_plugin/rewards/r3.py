"""R3's rewards (reason -> reflect -> refine): format reward F, correction C and the two stages' text rewards.

Stage 1 (plan, then image): R = V F + w F. Stage 2 (reflect, then refine from a buffered stage-1 image):
C = V_new - V_prev, or 1[the answer is "no further edit needed"] when V_prev == 1; R = w F + C F. V is the judge's
score in [0, 1]. Where the authors' code is not explicit, the choices are written down here: the format regex
(`format_reward`) and how an answer is matched against the no-edit sentence (`is_no_edit`).

V itself (`checklist_score`) is the share of a checklist derived from the prompt that the image passes: one item per
object group (count, colour, size), one for the relation, one for "nothing else". The authors ask a 72B VLM for a
score; our `evaluator` judge checks the items on the exact parse of the pixels, our `self` judge on the objects the
model's own caption names (`caption_objects`), with the relation answered by the model's yes/no. V = 1 exactly when
the whole prompt holds, which is what the perfect pool and C's stop branch need.
"""

import re
from collections.abc import Sequence

import torch

from umm_plugin.models.pretrain import NO_EDIT
from umm_plugin.rewards.srum import geneval_objects
from umm_plugin.worlds.evaluator import Detected, check
from umm_plugin.worlds.grammar import NUMBERS, PromptError, parse_prompt
from umm_plugin.worlds.scene import COLOR_NAMES

THINK = re.compile(r"\s*<think>(?P<plan>.*?)</think>(?P<rest>.*)", re.DOTALL)


def format_reward(text: str) -> float:
    """1.0 iff `text` opens with one well-formed `<think> plan </think>` block, else 0.0.

    Precisely: after optional leading whitespace the text starts with "<think>"; the first "</think>" closes it;
    the plan between them is non-empty after stripping whitespace; and neither tag occurs anywhere else (no
    second, nested or stray block). Anything may follow the block (the image, or the reflect answer).
    """
    m = THINK.fullmatch(text)
    if m is None or not m["plan"].strip():
        return 0.0
    stray = any(tag in part for tag in ("<think>", "</think>") for part in (m["plan"], m["rest"]))
    return 0.0 if stray else 1.0


def is_no_edit(answer: str) -> bool:
    """Whether a reflect answer says "no further edit needed".

    A leading think block (well-formed or not: everything up to the last "</think>") is dropped, then whitespace
    is collapsed; what remains must equal NO_EDIT exactly. So the plan may say anything, but "no further edit
    needed , add a red circle" is an edit: a hedged answer must not collect the perfect-image bonus.
    """
    return edit_instruction(answer) == NO_EDIT


def edit_instruction(answer: str) -> str:
    """What a reflect answer asks the refine turn to do: the text after the last "</think>", whitespace collapsed
    (the same cut `is_no_edit` makes)."""
    return " ".join(answer.rsplit("</think>", 1)[-1].split())


def correction(
    v_new: torch.Tensor, v_prev: torch.Tensor, answers: Sequence[str], stop_penalty: float = 0.0
) -> torch.Tensor:
    """[N] C = V_new - V_prev where V_prev < 1; where V_prev == 1 (exactly), C = 1[answer is no-edit], else 0.

    `stop_penalty` (ours, 0 = the authors' C): a no-edit answer on an imperfect root (V_prev < 1) gets C = V_new -
    V_prev - stop_penalty, i.e. -stop_penalty where the kept image keeps its V. The authors' C scores that stop like a
    failed edit, so where edits rarely succeed the only strong signal is the perfect roots' "stop" bonus; at 1 the
    stop decision is scored symmetrically, +1 right, -1 wrong."""
    if v_new.shape != v_prev.shape or v_new.dim() != 1 or len(answers) != len(v_new):
        raise ValueError(
            f"need v_new, v_prev [N] and N answers, got {tuple(v_new.shape)}, {tuple(v_prev.shape)}, "
            f"{len(answers)}"
        )
    for name, v in (("v_new", v_new), ("v_prev", v_prev)):
        if not ((v >= 0) & (v <= 1)).all():  # NaN fails both comparisons
            raise ValueError(f"{name} must lie in [0, 1] (no NaN)")
    if stop_penalty < 0:
        raise ValueError(f"stop_penalty={stop_penalty} must not be negative")
    stop = torch.tensor([is_no_edit(a) for a in answers], dtype=v_new.dtype, device=v_new.device)
    return torch.where(v_prev == 1, stop, v_new - v_prev - stop_penalty * stop)


def stage1_rewards(v: torch.Tensor, f: torch.Tensor, w: float = 1.0) -> torch.Tensor:
    """Stage-1 text reward R = V F + w F: a badly formatted plan earns nothing, however good the image."""
    return v * f + w * f


def stage2_rewards(c: torch.Tensor, f: torch.Tensor, w: float = 1.0) -> torch.Tensor:
    """Stage-2 text reward R = w F + C F."""
    return w * f + c * f


def checklist(meta: dict) -> list[dict]:
    """The prompt's checks as sub-prompts `check` reads: each object group without its position, the relation (the
    whole include list) if there is one, and "nothing else" (the exclude list) if there is one."""
    items = [{"include": [{k: v for k, v in r.items() if k != "position"}]} for r in meta["include"]]
    if any("position" in r for r in meta["include"]):
        items.append({"include": meta["include"], "relation": True})
    if meta.get("exclude"):
        items.append({"include": [], "exclude": meta["exclude"]})
    return items


def checklist_score(meta: dict, objects, relation: bool | None = None) -> float:
    """V in [0, 1]: the share of `checklist(meta)` that `objects` pass. `relation` answers the relation item instead
    of the objects' boxes (a caption names objects but not where they are)."""
    items = checklist(meta)
    passed = [relation if it.get("relation") and relation is not None else check(it, objects)[0] for it in items]
    return float(sum(passed)) / len(items)


def colour_slot(words: Sequence[str]) -> int | None:
    """Where a caption that names no colour would name its first object's: the index after the count word that
    follows "of" ("a photo of two | circles"); None if it names a colour or has no such count word.

    The pretrained captions list objects with colours half the time; greedy decoding splits that half over six
    colour words and so skips colours most of the time, and a colour-free caption cannot refute a wrong colour. The
    self judge (`caption colours`) puts the model's best colour word here and decodes on, and the listing keeps
    colours from there."""
    if any(w in COLOR_NAMES for w in words):
        return None
    return next((i + 1 for i in range(1, len(words)) if words[i] in NUMBERS and words[i - 1] == "of"), None)


def caption_objects(caption: str, meta: dict):
    """(objects, meta to check them against) from the model's own caption of an image, for the `self` judge.

    The objects carry the shapes, counts and colours the caption names and no boxes. What the caption leaves out it
    cannot refute: a caption without colours drops the prompt's colour requirements, and captions never state sizes,
    so sizes are dropped too. An unreadable caption names nothing (every object item fails)."""
    try:
        groups = parse_prompt(caption).groups
    except PromptError:
        groups = ()
    drop = {"size"} | (set() if any(g.color for g in groups) else {"color"})
    meta = {**meta, "include": [{k: v for k, v in r.items() if k not in drop} for r in meta["include"]]}
    objects = [Detected(g.shape, g.color or "", "", (0, 0, 0, 0), 0) for g in groups for _ in range(g.count)]
    return objects, meta


def geneval_checklist(meta: dict, ask: str) -> list[str]:
    """The `self` judge's questions about a picture for a GenEval-format line (any model of the interface): the
    line's `yn_question_list` if it has one; else `ask` about each of its objects ("a photo of a red car") and then
    about the whole prompt (counts and relations), without repeats. V is the share answered yes."""
    if meta.get("yn_question_list"):
        return list(meta["yn_question_list"])
    return [ask.format(prompt=s) for s in dict.fromkeys([*geneval_objects(meta), meta["prompt"]])]
