import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from umm_plugin.cli import main
from umm_plugin.worlds.grammar import prompt_pool


def cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "umm_plugin.cli", *args], capture_output=True, text=True, env=env)


def test_shapes_check_reports_exact_evaluator_and_round_trips(pretrained_dir, capsys):
    main(["shapes", "check", "--n", "120", "--model", str(pretrained_dir)])
    report = json.loads(capsys.readouterr().out)
    assert report["evaluator_on_ground_truth"]["overall"] == 1.0
    assert report["tokenizer_round_trip"] >= 0.99
    assert report["diffusion_head_round_trip"] >= 0.99


def test_generate_writes_a_png_grid(pretrained_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    main(
        [
            "generate",
            "--model",
            str(pretrained_dir),
            "--prompt",
            "a photo of a red circle",
            "--n",
            "4",
            "--out",
            str(out),
        ]
    )
    img = Image.open(out)
    assert img.size == (4 * (32 * 4 + 4) + 4, 32 * 4 + 8 + 16)
    assert "wrote" in capsys.readouterr().out


def test_eval_prints_the_table_and_writes_json(pretrained_dir, tmp_path, capsys):
    path = tmp_path / "r.json"
    main(["eval", "--model", str(pretrained_dir), "--n", "30", "--json", str(path)])
    out = capsys.readouterr().out
    assert "generation" in out and "understanding" in out and "gap" in out and "AUC" in out
    r = json.loads(path.read_text())
    assert set(r["generation"]) >= {"single_object", "position_size", "overall"}
    for key in ("understanding", "gvu_reward_mean"):
        assert 0 <= r["own_generations"][key] <= 1
    assert r["gap"] == pytest.approx(r["understanding"]["overall"] - r["generation"]["overall"])


RED = "a photo of a red circle"


@pytest.mark.parametrize(
    "args, msg",
    [
        (["generate", "--model", "{m}", "--prompt", "a photo of a red banana"], "unknown word 'banana'"),
        (["generate", "--model", "{m}", "--prompt", ""], "empty prompt"),
        (["eval", "--model", "/nonexistent/model"], "model directory /nonexistent/model not found"),
        (["eval", "--model", "{corrupt}"], "cannot load the backbone"),
        (["eval", "--model", "{m}", "--device", "cuda"], "is a ShapesWorld model: it runs on CPU"),
        (["shapes", "pretrain", "--out", "x", "--gap", "huge"], "gap='huge'"),
    ],
)
def test_bad_input_is_one_line_not_a_stack_trace(pretrained_dir, tmp_path, args, msg):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in pretrained_dir.iterdir():
        if f.is_file():
            (corrupt / f.name).write_bytes(f.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    r = cli(*[a.format(m=pretrained_dir, corrupt=corrupt) for a in args])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and msg in lines[0], r.stderr


@pytest.mark.parametrize(
    "args, msg",
    [
        (["generate", "--model", "{m}", "--prompt", RED, "--n", "0"], "argument --n: 0 must be at least 1"),
        (["generate", "--model", "{m}", "--prompt", RED, "--min-p", "2"], "min_p 2.0 must lie in [0, 1]"),
        (["generate", "--model", "{m}", "--prompt", RED, "--top-k", "-1"], "top_k -1 must be >= 0"),
        (["generate", "--model", "{m}", "--prompt", RED, "--temperature", "-1"], "temperature -1.0 must be >="),
        (["eval", "--model", "{m}", "--rounds", "-1"], "argument --rounds: -1 must be at least 0"),
        (["eval", "--model", "{m}", "--n", "0"], "argument --n: 0 must be at least 1"),
        (["shapes", "prompts", "--n", "-5", "--out", "p.jsonl"], "argument --n: -5 must be at least 1"),
        (["shapes", "check", "--n", "zero"], "argument --n: 'zero' is not an integer"),
        (["srum", "--model", "{m}", "--out", "x", "--steps", "3"], "unrecognized arguments: --steps 3"),  # no usage
    ],
)
def test_bad_option_values_are_one_line_before_any_work(pretrained_dir, args, msg, capsys):
    with pytest.raises(SystemExit) as e:  # in-process: argparse and the config checks, before a model is loaded
        main([a.format(m=pretrained_dir) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and msg in lines[0], lines


def test_prompts_cycle_through_the_chosen_categories_only(tmp_path):
    out = tmp_path / "p.jsonl"
    main(["shapes", "prompts", "--n", "6", "--tags", "position,color_attr", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tag"] for r in rows] == ["position", "color_attr"] * 3
    r = cli("shapes", "prompts", "--tags", "position,colour", "--out", str(out))
    assert r.returncode == 2 and "unknown categories colour; use any of single_object" in r.stderr
    # a category listed twice is drawn twice as often; --paired-relations keeps relation layouts with their mirror
    tags = "position,colors,position"
    main(["shapes", "prompts", "--n", "60", "--tags", tags, "--paired-relations", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tag"] for r in rows] == ["position", "colors", "position"] * 20
    paired = {s.text() for s in prompt_pool("position", "train", paired=True)}
    assert {r["prompt"] for r in rows if r["tag"] == "position"} <= paired


@pytest.mark.parametrize(
    "args",
    [
        ["shapes", "pretrain", "--out", "{d}", "--steps", "1"],
        ["janus", "tiny", "--out", "{d}"],
        ["srum", "--model", "/nonexistent/model", "--out", "{d}"],
    ],
)
def test_outputs_never_overwrite_a_directory_of_someone_elses_files(tmp_path, args, capsys):
    user = tmp_path / "gpt2"  # a user's model directory
    user.mkdir()
    files = {"config.json": b'{"model_type": "gpt2"}', "model.safetensors": b"weights"}
    for name, data in files.items():
        (user / name).write_bytes(data)
    with pytest.raises(SystemExit) as e:
        main([a.format(d=user) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(lines) == 1 and "holds files umm-plugin did not write" in lines[0], lines
    assert {p.name: p.read_bytes() for p in user.iterdir()} == files
