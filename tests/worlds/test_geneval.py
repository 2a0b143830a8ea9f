"""GenEval-format prompt files with real classes: every valid line loads, every malformed line is one short error."""

import json

import pytest

from umm_plugin.worlds.geneval import GENEVAL_TAGS, MAX_SHOWN, load_geneval, shorten
from umm_plugin.worlds.grammar import PromptError, load_prompts

GOOD = '{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "brown"}], "prompt": "a brown dog"}'


def write(path, lines) -> str:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return str(path)


def test_real_geneval_lines_load_with_every_field(tmp_path, coco_records):
    path = write(tmp_path / "coco.jsonl", [json.dumps(rec) for rec in coco_records])
    loaded = load_geneval(path)
    assert [r["tag"] for r in loaded[:6]] == list(GENEVAL_TAGS)
    # exclude defaults to none; extra keys pass through
    assert loaded == [{"exclude": [], **rec} for rec in coco_records]
    assert loaded[2]["exclude"] == [{"class": "teddy bear", "count": 4}]
    assert loaded[4]["include"][1]["position"] == ["right of", 0]
    assert loaded[6]["yn_question_list"][1] == "Is the bed above the cats?"


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    path = write(
        tmp_path / "bom.jsonl",
        [
            b"\xef\xbb\xbf" + GOOD.encode(),
            '{"tag": "x", "include": [{"class": "café", "count": 2}], "prompt": "deux cafés"}',
        ],
    )
    assert [r["include"][0]["class"] for r in load_geneval(path)] == ["dog", "café"]


BIG = "x" * 100_000


@pytest.mark.parametrize(
    "line, msg",
    [
        pytest.param(
            "3", 'must be a JSON object like {"tag": ..., "include": [...], "prompt": ...}, got 3', id="bare-number"
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": 7}',
            'prompt: must be a non-empty string like "a photo of a dog", got 7',
            id="prompt-not-string",
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": "  "}',
            'prompt: must be a non-empty string like "a photo of a dog", got "  "',
            id="prompt-blank",
        ),
        pytest.param(
            '{"tag": "colors", "include": "dog", "prompt": "a dog"}',
            'include: must be a non-empty list of objects like [{"class": "dog", "count": 1}], got "dog"',
            id="include-string",
        ),
        pytest.param(
            '{"tag": "colors", "include": [], "prompt": "a dog"}',
            'include: must be a non-empty list of objects like [{"class": "dog", "count": 1}], got []',
            id="include-empty",
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"class": "dog", "count": 1}, "cat"], "prompt": "a dog"}',
            'include[1]: must be an object like {"class": "dog", "count": 1}, got "cat"',
            id="include-entry-not-object",
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"count": 1}], "prompt": "a dog"}',
            'include[0].class: missing; every entry names its object class, like {"class": "dog", "count": 1}',
            id="class-missing",
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"class": "dog", "count": 1}], "exclude": null, "prompt": "a dog"}',
            'exclude: must be a list of objects like [{"class": "dog", "count": 1}], got null; '
            "leave it out to exclude nothing",
            id="exclude-null",
        ),
        pytest.param(
            '{"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog"}], '
            '"prompt": "two dogs"}',
            'exclude[0].count: missing; every entry says how many, like {"class": "dog", "count": 1}',
            id="exclude-count-missing",
        ),
        pytest.param(
            '{"include": [{"class": "dog", "count": 1}], "prompt": "a dog"}',
            'tag: missing; every line needs its category (e.g. "counting"), the label rewards are kept by',
            id="tag-missing",
        ),
        pytest.param(
            '{"tag": "", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"}',
            'tag: must be a non-empty string like "counting", got ""',
            id="tag-empty",
        ),
        *[
            pytest.param(
                '{"tag": "counting", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": '
                + count
                + '}], "prompt": "dogs and cats"}',
                f"include[1].count: must be an int >= 1, got {count}",
                id=f"count-{count}",
            )
            for count in ("0", "-3", "true", '"two"', "2.0")
        ],
        pytest.param(
            '{"tag": "counting", "include": [{"class": "dog", "count": 100}], "prompt": "a hundred dogs"}',
            "include[0].count: must be at most 16 (objects of one class in an image), got 100",
            id="count-100",
        ),
        pytest.param(
            '{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": ["red"]}], "prompt": "a red dog"}',
            'include[0].color: must be a non-empty string like "red", got ["red"]',
            id="color-not-string",
        ),
        pytest.param(
            '{"tag": "position", "include": [{"class": "dog", "count": 1}, '
            '{"class": "cat", "count": 1, "position": ["near", 0]}], "prompt": "a cat near a dog"}',
            'include[1].position[0]: must be one of "left of", "right of", "above", "below", got "near"',
            id="position-relation-unknown",
        ),
        pytest.param(
            '{"tag": "position", "include": [{"class": "dog", "count": 1}, '
            '{"class": "cat", "count": 1, "position": ["above", 1]}], "prompt": "a cat above itself"}',
            "include[1].position[1]: must be the index of an earlier include entry (0 to 0), got 1",
            id="position-index-not-earlier",
        ),
        pytest.param(
            '{"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}, '
            '{"class": "cow", "count": 1, "position": ["below", 5]}], "prompt": "a cow below"}',
            "include[2].position[1]: must be the index of an earlier include entry (0 to 1), got 5",
            id="position-index-out-of-range",
        ),
        pytest.param(
            '{"tag": "position", "include": [{"class": "dog", "count": 1, "position": ["above", 0]}], "prompt": "a"}',
            "include[0].position: the first include entry has no earlier entry to be placed against",
            id="position-on-first-entry",
        ),
        pytest.param(
            '{"tag": "position", "include": [{"class": "dog", "count": 1}, '
            '{"class": "cat", "count": 1, "position": "left of"}], "prompt": "a cat left of a dog"}',
            'include[1].position: must be a [relation, index] pair like ["left of", 0], got "left of"',
            id="position-not-pair",
        ),
        pytest.param(
            '{"tag": "t", "include": [{"class": "dog", "count": 1}], "prompt": "a dog", "yn_question_list": "Is it?"}',
            'yn_question_list: must be a list of yes/no questions (strings), got "Is it?"',
            id="questions-not-list",
        ),
        pytest.param(
            '{"tag": "t", "include": [{"class": "dog", "count": 1}], "prompt": "a dog", '
            '"yn_question_list": ["Is it?", 1]}',
            "yn_question_list[1]: must be a non-empty string (a yes/no question), got 1",
            id="question-not-string",
        ),
        pytest.param(
            "{not json",
            "not valid JSON (Expecting property name enclosed in double quotes at column 2)",
            id="bad-json",
        ),
        pytest.param("", "empty line; remove it (one JSON object per line)", id="blank-line"),
        pytest.param("   ", "empty line; remove it (one JSON object per line)", id="whitespace-line"),
        pytest.param(
            b'{"tag": "\xff\xfe"}', "not UTF-8 text (byte 0xff at column 10); save the file as UTF-8", id="binary"
        ),
        pytest.param(
            json.dumps({"tag": "t", "include": [{"class": "dog", "count": 1}], "prompt": {"text": BIG}}),
            'prompt: must be a non-empty string like "a photo of a dog", got {"text": "' + "x" * 69 + "…",
            id="100KB-prompt",
        ),
        pytest.param(
            json.dumps({"tag": "t", "include": [{"class": "dog", "count": BIG}], "prompt": "a dog"}),
            'include[0].count: must be an int >= 1, got "' + "x" * 78 + "…",
            id="100KB-count",
        ),
        pytest.param(
            json.dumps({"tag": "t", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a cat"}),
            'include[0].class: "dog" does not appear in the prompt "a photo of a cat"; the metadata must describe '
            "the prompt",
            id="class-not-in-prompt",
        ),
        pytest.param(
            json.dumps({"tag": "t", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a dog"}),
            'include[0].color: "red" does not appear in the prompt "a dog"',
            id="colour-not-in-prompt",
        ),
    ],
)
def test_malformed_lines_give_one_short_error_naming_file_line_and_field(tmp_path, line, msg):
    path = write(tmp_path / "train.jsonl", [GOOD, line, GOOD])
    with pytest.raises(PromptError) as err:
        load_geneval(path)
    assert str(err.value) == f"{path}:2: {msg}"
    assert "\n" not in str(err.value) and len(msg) < 200


def test_empty_and_missing_files_are_named(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(PromptError) as err:
        load_geneval(tmp_path / "empty.jsonl")
    assert str(err.value) == f"{tmp_path / 'empty.jsonl'}: empty file; write one GenEval metadata object per line"
    with pytest.raises(PromptError, match="nope.jsonl: prompt file not found"):
        load_geneval(tmp_path / "nope.jsonl")


def test_quoted_values_are_short_and_on_one_line():
    assert shorten("a\u2028b\nc") == '"a\\u2028b\\nc"'
    assert len(shorten(BIG)) == MAX_SHOWN and shorten(BIG).endswith("…")
    assert shorten(True) == "true" and shorten(None) == "null"


def test_check_world_errors_get_the_file_and_line(tmp_path, coco_records):
    def only_dogs(rec):
        for i, req in enumerate(rec["include"]):
            if req["class"] != "dog":
                raise PromptError(f"include[{i}].class: this world only draws dogs, got {shorten(req['class'])}")

    path = write(tmp_path / "w.jsonl", [GOOD, json.dumps(coco_records[0])])
    with pytest.raises(PromptError) as err:
        load_geneval(path, only_dogs)
    assert str(err.value) == f'{path}:2: include[0].class: this world only draws dogs, got "stop sign"'


def test_shapesworld_loader_rejects_real_classes_in_one_line(tmp_path, coco_records):
    path = write(tmp_path / "coco.jsonl", [json.dumps(rec) for rec in coco_records])
    with pytest.raises(PromptError) as err:
        load_prompts(path)
    msg = str(err.value)
    assert msg.startswith(f'{path}:1: include[0].class: unknown class "stop sign"; ShapesWorld models only know')
    assert "(circle square triangle)" in msg and "geneval.load_geneval" in msg and "\n" not in msg


def test_shapesworld_loader_checks_structure_first_and_keeps_long_prompts_short(tmp_path):
    shapes = '{"include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}'
    path = write(tmp_path / "s.jsonl", [shapes])
    assert load_prompts(path) == [{**json.loads(shapes), "exclude": [], "tag": "single_object"}]  # tag read off text
    for bad, msg in [
        ('{"include": "circle", "prompt": "a photo of a circle"}', "include: must be a non-empty list"),
        (shapes.replace('"count": 1', '"count": "one"'), 'include[0].count: must be an int >= 1, got "one"'),
        (shapes.replace("a photo of a circle", "a photo of " + "circle " * 20_000), "prompt: cannot read prompt"),
        (shapes.replace("a photo of a circle", "a photo of a " + "z" * 100_000), 'prompt: unknown word "zzzz'),
    ]:
        write(tmp_path / "s.jsonl", [shapes, bad])
        with pytest.raises(PromptError) as err:
            load_prompts(path)
        assert str(err.value).startswith(f"{path}:2: {msg}") and len(str(err.value)) < 600


def test_metadata_is_checked_against_the_prompt_with_irregular_plurals(tmp_path):
    lines = [
        {"tag": "counting", "include": [{"class": "person", "count": 3}], "prompt": "a photo of three people"},
        {"tag": "counting", "include": [{"class": "mouse", "count": 2}], "prompt": "a photo of two Mice"},
        {"tag": "colors", "include": [{"class": "bus", "count": 2, "color": "Red"}], "prompt": "two red buses"},
    ]
    path = write(tmp_path / "p.jsonl", [json.dumps(rec) for rec in lines])
    assert [m["prompt"] for m in load_geneval(path)] == [rec["prompt"] for rec in lines]
