"""GenEval-format prompt files for any world or model: the structure of each line, not its vocabulary.

GenEval's metadata (one JSON object per line) names a category `tag`, the objects a prompt asks for (`include`:
class, count, optional colour and position relative to an earlier entry), optionally objects it rules out
(`exclude`), and the `prompt` text. Classes, colours and tags are free strings here, so COCO's classes, GenEval++ or
T2I-CompBench categories and TIIF-style `yn_question_list` checklists all load; a world that knows only its own
words (ShapesWorld) adds its vocabulary checks through `check_world`. Every malformed line becomes one
`PromptError` of one short line, `file:line: field: what is wrong and what to do`, so a training launch fails at
the first bad line with a message that says where to look.
"""

import json
from pathlib import Path


class PromptError(ValueError):
    """A prompt or prompt file that cannot be read; the message names what and where."""


GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")  # GenEval's `position` relations
MAX_COUNT = 16  # objects of one class in one image; GenEval asks for at most 4
MAX_SHOWN = 80  # characters of a bad value quoted in a message
ENTRY = '{"class": "dog", "count": 1}'
IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives"}  # COCO classes whose plural does not contain them


def shorten(value) -> str:
    """`value` as JSON on one printable line of at most MAX_SHOWN characters, so any value can be quoted."""
    text = json.dumps(value, ensure_ascii=False)
    text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(entry, field: str, index: int | None) -> None:
    """One include (index = its position in the list) or exclude (index None) entry."""
    if not isinstance(entry, dict):
        raise PromptError(f"{field}: must be an object like {ENTRY}, got {shorten(entry)}")
    if "class" not in entry:
        raise PromptError(f"{field}.class: missing; every entry names its object class, like {ENTRY}")
    if not _is_text(entry["class"]):
        raise PromptError(f'{field}.class: must be a non-empty string like "dog", got {shorten(entry["class"])}')
    if "count" not in entry:
        raise PromptError(f"{field}.count: missing; every entry says how many, like {ENTRY}")
    count = entry["count"]
    if not _is_count(count) or count < 1:
        raise PromptError(f"{field}.count: must be an int >= 1, got {shorten(count)}")
    if count > MAX_COUNT:
        raise PromptError(
            f"{field}.count: must be at most {MAX_COUNT} (objects of one class in an image), got {count}"
        )
    if "color" in entry and not _is_text(entry["color"]):
        raise PromptError(f'{field}.color: must be a non-empty string like "red", got {shorten(entry["color"])}')
    if index is None or "position" not in entry:
        return
    position = entry["position"]
    if not isinstance(position, list) or len(position) != 2:
        raise PromptError(
            f'{field}.position: must be a [relation, index] pair like ["left of", 0], got {shorten(position)}'
        )
    relation, target = position
    if relation not in RELATIONS:
        raise PromptError(
            f"{field}.position[0]: must be one of {', '.join(map(shorten, RELATIONS))}, got {shorten(relation)}"
        )
    if index == 0:
        raise PromptError(f"{field}.position: the first include entry has no earlier entry to be placed against")
    if not _is_count(target) or not 0 <= target < index:
        raise PromptError(
            f"{field}.position[1]: must be the index of an earlier include entry (0 to {index - 1}), "
            f"got {shorten(target)}"
        )


def check_record(rec, require_tag: bool = True) -> dict:
    """The structural checks of one decoded line; returns it with `exclude` defaulting to [] (no exclusions).

    Keys other than GenEval's (and TIIF's `yn_question_list`) pass through unchecked: a world may read its own.
    """
    if not isinstance(rec, dict):
        raise PromptError(
            f'must be a JSON object like {{"tag": ..., "include": [...], "prompt": ...}}, got {shorten(rec)}'
        )
    if "tag" in rec or require_tag:
        if "tag" not in rec:
            raise PromptError(
                'tag: missing; every line needs its category (e.g. "counting"), the label rewards are kept by'
            )
        if not _is_text(rec["tag"]):
            raise PromptError(f'tag: must be a non-empty string like "counting", got {shorten(rec["tag"])}')
    if "include" not in rec:
        raise PromptError(f"include: missing; every line lists the objects its prompt asks for, like [{ENTRY}]")
    include = rec["include"]
    if not isinstance(include, list) or not include:
        raise PromptError(f"include: must be a non-empty list of objects like [{ENTRY}], got {shorten(include)}")
    for i, entry in enumerate(include):
        _check_entry(entry, f"include[{i}]", i)
    exclude = rec.setdefault("exclude", [])
    if not isinstance(exclude, list):
        raise PromptError(
            f"exclude: must be a list of objects like [{ENTRY}], got {shorten(exclude)}; "
            "leave it out to exclude nothing"
        )
    for i, entry in enumerate(exclude):
        _check_entry(entry, f"exclude[{i}]", None)
    if "prompt" not in rec:
        raise PromptError("prompt: missing; every line needs the prompt text")
    if not _is_text(rec["prompt"]):
        raise PromptError(f'prompt: must be a non-empty string like "a photo of a dog", got {shorten(rec["prompt"])}')
    questions = rec.get("yn_question_list", [])
    if not isinstance(questions, list):
        raise PromptError(f"yn_question_list: must be a list of yes/no questions (strings), got {shorten(questions)}")
    for i, q in enumerate(questions):
        if not _is_text(q):
            raise PromptError(
                f"yn_question_list[{i}]: must be a non-empty string (a yes/no question), got {shorten(q)}"
            )
    return rec


def check_described(rec: dict) -> None:
    """The metadata must describe its prompt: each include entry's class (or its irregular plural) and colour appear
    in the prompt text (case-insensitive). A world's own check, which parses its prompts, replaces this one."""
    text = rec["prompt"].lower()
    for i, entry in enumerate(rec["include"]):
        name = entry["class"].lower()
        if name not in text and IRREGULAR.get(name, name) not in text:
            raise PromptError(
                f"include[{i}].class: {shorten(entry['class'])} does not appear in the prompt "
                f"{shorten(rec['prompt'])}; the metadata must describe the prompt"
            )
        if _is_text(entry.get("color")) and entry["color"].lower() not in text:
            raise PromptError(
                f"include[{i}].color: {shorten(entry['color'])} does not appear in the prompt {shorten(rec['prompt'])}"
            )


def _lines(path: Path):
    """(where, text) for each line of a UTF-8 file; blank lines, bad bytes and an empty file are errors."""
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PromptError(f"{path}: cannot read the prompt file ({e.strerror})") from None
    if not data:
        raise PromptError(f"{path}: empty file; write one GenEval metadata object per line")
    for i, raw in enumerate(data.splitlines(), 1):
        where = f"{path}:{i}"
        try:
            line = raw.decode("utf-8-sig" if i == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(
                f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); save the file as UTF-8"
            ) from None
        if not line.strip():
            raise PromptError(f"{where}: empty line; remove it (one JSON object per line)")
        yield where, line


def load_geneval(path, check_world=None, *, require_tag: bool = True) -> list[dict]:
    """Read a GenEval-format JSONL prompt file with any classes, colours and tags, checking every line.

    GENEVAL_TAGS are GenEval's six categories, but any non-empty tag is accepted (GenEval++, T2I-CompBench and
    others add their own); the tag is the label per-category rewards and results are kept by. `check_world(rec)`,
    if given, runs after the structural checks on each record, may fill in fields, and raises
    `PromptError("field: problem")` for what its world cannot draw, else `check_described` checks the metadata
    against the prompt text; the file and line are added here. With
    `require_tag=False` a line may leave the tag out for `check_world` to fill in.
    """
    path = Path(path)
    out = []
    for where, line in _lines(path):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # a number too long to convert, or nesting too deep
            raise PromptError(f"{where}: not valid JSON ({shorten(str(e) or type(e).__name__)})") from None
        try:
            check_record(rec, require_tag)
            (check_world or check_described)(rec)
        except PromptError as e:
            raise PromptError(f"{where}: {e}") from None
        out.append(rec)
    return out
