"""Shared fixtures: a fitted visual tokenizer, tiny seeded UMMs built from configs (nothing is downloaded), and a
loopback OpenAI-compatible server that judges ShapesWorld images with the exact evaluator (R3's `openai` judge)."""

import base64
import io
import json
import re
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from umm_plugin.models.pretrain import PretrainConfig, pretrain
from umm_plugin.models.umm import UMM
from umm_plugin.models.visual_tokenizer import PatchVQ
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import WORDS, make_prompts, parse_prompt, sample_scene
from umm_plugin.worlds.scene import perturb, render


@pytest.fixture(scope="session")
def vq():
    rng = np.random.default_rng(0)
    images = []
    for meta in make_prompts(1000, "train", 0):
        objs = sample_scene(meta, rng)
        bad, frags = perturb(objs, rng)
        images += [render(objs), render(bad, fragments=frags)]
    return PatchVQ.fit(np.stack(images))


@pytest.fixture(scope="session")
def tiny_umm(vq):
    """Random-init Qwen2 (hidden 64, 2 layers) around the fitted tokenizer."""
    return UMM.build(WORDS, vq, hidden=64, layers=2, heads=4, seed=0)


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """A tiny model through the real `pretrain` (every task, own samples included), saved to disk."""
    out = tmp_path_factory.mktemp("tiny_model")
    cfg = PretrainConfig(
        out=str(out),
        steps=40,
        batch_size=32,
        hidden=32,
        layers=1,
        head_steps=5,
        tokenizer_scenes=200,
        own_samples_from=0.5,
        lr=3e-3,
    )
    pretrain(cfg, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def caption_base_dir(tmp_path_factory):
    """A base through the real `pretrain` long enough (800 steps, hidden 64, 2 layers; under a minute) to write
    well-formed captions, so caption-reading code paths run. No test bounds its quality: that depends on the seed
    and the CPU (bench/judge_fig8.py reports the judge's quality over seeds)."""
    out = tmp_path_factory.mktemp("caption_base")
    cfg = PretrainConfig(
        out=str(out), steps=800, batch_size=32, hidden=64, layers=2, head_steps=1, tokenizer_scenes=500,
        judge_share=0.2, r3_share=0.05, own_samples_from=1.0, lr=3e-3,
    )  # fmt: skip
    pretrain(cfg, log=lambda *_: None)
    return out


# GenEval-format lines with COCO classes, every GenEval tag's shape, and a TIIF-style checklist line.
COCO = [
    {"tag": "single_object", "include": [{"class": "stop sign", "count": 1}], "prompt": "a photo of a stop sign"},
    {
        "tag": "two_object",
        "include": [{"class": "cell phone", "count": 1}, {"class": "fire hydrant", "count": 1}],
        "prompt": "a photo of a cell phone and a fire hydrant",
    },
    {
        "tag": "counting",
        "include": [{"class": "teddy bear", "count": 3}],
        "exclude": [{"class": "teddy bear", "count": 4}],
        "prompt": "a photo of three teddy bears",
    },
    {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
    {
        "tag": "position",
        "include": [{"class": "train", "count": 1}, {"class": "stop sign", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a stop sign right of a train",
    },
    {
        "tag": "color_attr",
        "include": [
            {"class": "oven", "count": 1, "color": "purple"},
            {"class": "teddy bear", "count": 1, "color": "black"},
        ],
        "prompt": "a photo of a purple oven and a black teddy bear",
    },
    {  # TIIF-style: a checklist of yes/no questions and a tag of its own, kept as given
        "tag": "spatial_3d",
        "include": [{"class": "cat", "count": 2}, {"class": "bed", "count": 1, "position": ["above", 0]}],
        "prompt": "two cats under a bed",
        "yn_question_list": ["Are there two cats?", "Is the bed above the cats?"],
        "source": "tiif",
    },
]


@pytest.fixture(scope="session")
def coco_records():
    return COCO


@pytest.fixture(scope="session")
def coco_file(tmp_path_factory):
    """COCO written as a GenEval-format JSONL prompt file."""
    path = tmp_path_factory.mktemp("prompts") / "coco.jsonl"
    path.write_text("".join(json.dumps(rec) + "\n" for rec in COCO))
    return path


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory):
    """A random-init SAM (under 100 k parameters) in the public checkpoints' layout (`facebook/sam-vit-base`)."""
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    vision = dict(
        hidden_size=32,
        output_channels=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        mlp_dim=64,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=8,
    )
    prompt = dict(hidden_size=16, image_size=64, patch_size=8, image_embedding_size=8, mask_input_channels=4)
    decoder = dict(hidden_size=16, mlp_dim=32, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=16)
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    assert sum(p.numel() for p in model.parameters()) < 100_000
    processor = SamProcessor(
        image_processor=SamImageProcessorPil(
            size={"longest_edge": 64},
            pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16},
            mask_pad_size={"height": 16, "width": 16},
        )
    )
    out = tmp_path_factory.mktemp("tiny_sam")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_janus_dir(tmp_path_factory):
    """A random-init Janus (0.6 M parameters) in the real checkpoint layout, written by `build_tiny_janus`."""
    from umm_plugin.models.janus import build_tiny_janus

    out = tmp_path_factory.mktemp("tiny_janus")
    build_tiny_janus(out, seed=0)
    return out


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def reply(self, status: int, body: bytes, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.end_headers()
        trickle = self.server.cfg.get("trickle", 0.0)  # seconds over which the body is sent byte by byte
        for i in range(len(body)) if trickle else ():
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()
            time.sleep(trickle / len(body))
        if not trickle:
            self.wfile.write(body)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        time.sleep(srv.cfg["sleep"])
        if srv.cfg.get("resets"):  # close with a TCP reset instead of answering
            srv.cfg["resets"] -= 1
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if self.path != "/v1/chat/completions":
            return self.reply(404, b'{"error": "not found"}')
        if srv.cfg["statuses"]:  # a status, or (status, headers)
            status, headers = (lambda s: s if isinstance(s, tuple) else (s, {}))(srv.cfg["statuses"].pop(0))
            return self.reply(status, b'{"error": "forced"}', headers)
        content = srv.cfg["content"]
        if callable(content):  # the test's own judge: request body -> reply text
            content = content(body)
        if content is None:  # a perfect VLM judge for ShapesWorld
            parts = body["messages"][0]["content"]
            image = decode(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))
            prompt = re.search(r'"(.*?)"', next(p["text"] for p in parts if p["type"] == "text")).group(1)
            content = "1" if evaluate(image, parse_prompt(prompt).meta())[0] else "0"
        answer = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        self.reply(200, json.dumps(answer).encode())


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that timed out and left is expected
            super().handle_error(request, client_address)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # loopback only, whatever proxy the environment sets
    srv = Server(("127.0.0.1", 0), Handler)
    srv.cfg = {"statuses": [], "content": None, "sleep": 0.0}
    srv.requests, srv.decode = [], decode  # decode: what a test reads the sent PNGs back with
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)  # fast shutdown
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def kill_and_resume():
    """`run(cmd, env, out, step)`: start the recipe command `cmd` (["bash", "recipes/<r>.sh", ...]), SIGKILL its
    whole process group once its checkpoint of `step` is complete (mid-way through the next step), then run it again
    with --resume; returns the resumed run's CompletedProcess."""
    import os
    import signal
    import subprocess

    def run(cmd, env, out, step):
        latest = out / "ckpt" / "_actor" / "latest"
        with subprocess.Popen(
            cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as p:
            deadline = time.time() + 900
            while not (latest.is_file() and latest.read_text().strip() == f"global_step{step}"):
                assert p.poll() is None, p.stdout.read().decode()[-4000:]
                assert time.time() < deadline, "no checkpoint of step {step} within 15 min"
                time.sleep(0.1)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        assert not (out / "actor").exists()  # killed before the end
        return subprocess.run(cmd[:2] + ["--resume"] + cmd[2:], env=env, capture_output=True, text=True)

    return run


@pytest.fixture
def same_run():
    """`check(a, b, files)`: run directories a and b logged the same metrics (timings aside) and curve, and wrote
    the same bytes to each of `files` (paths inside them)."""
    import csv

    def check(a, b, files):
        def metrics(run):
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            return [{k: v for k, v in r.items() if not k.startswith("timing/")} for r in rows]

        assert metrics(a) == metrics(b)
        assert list(csv.DictReader((a / "curve.csv").open())) == list(csv.DictReader((b / "curve.csv").open()))
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f

    return check


@pytest.fixture
def same_training():
    """`check(one, two, keys, tol)`: run `two` (2 actor ranks x 2 engines) drew the samples run `one` (1 x 1) drew at
    step 1 (its metrics `keys` equal to 1e-5), its two engines held the same weights after every sync (the digests they
    keep in their checkpoints), and its actor's weights after step 1 equal one's to `tol` (DeepSpeed checkpoints;
    ZeRO-2 GvU measured 5.2e-8). Returns that gap."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    def step1(run):
        ckpt = run / "ckpt" / "_actor"
        whole = ckpt / "global_step1" / "mp_rank_00_model_states.pt"  # ZeRO-2: the whole weights in one file
        if whole.is_file():
            return torch.load(whole, weights_only=False)["module"]
        return get_fp32_state_dict_from_zero_checkpoint(ckpt, tag="global_step1")  # ZeRO-3: gathered from shards

    def check(one, two, keys, tol=1e-6):
        first = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in (one, two)]
        for key in keys:
            assert first[1][key] == pytest.approx(first[0][key], rel=1e-5, abs=1e-7), key
        for digests in zip(*[sorted((two / "ckpt" / "umm_engine").glob(f"*_engine{i}.pt")) for i in (0, 1)]):
            assert len({torch.load(p, weights_only=False)["weights"] for p in digests}) == 1, digests
        states = [step1(d) for d in (one, two)]
        gap = max(float((states[0][k] - states[1][k]).abs().max()) for k in states[0])
        assert gap < tol, gap
        return gap

    return check
