"""OpenAIJudge against a real loopback HTTP server that judges ShapesWorld images with the exact evaluator."""

import json
import re
import socket
import time
import warnings

import numpy as np
import pytest

from umm_plugin.rewards.openai_judge import QUESTION, JudgeError, OpenAIJudge
from umm_plugin.worlds.evaluator import evaluate
from umm_plugin.worlds.grammar import make_prompts, sample_scene
from umm_plugin.worlds.scene import render


@pytest.fixture(scope="module")
def scene():
    """(prompt, right image, wrong image): the wrong one is a scene for another prompt, checked to fail this one."""
    meta = make_prompts(1, "train", 0, tags=("position",))[0]
    right = render(sample_scene(meta, np.random.default_rng(0)))
    assert evaluate(right, meta)[0]
    for seed in range(1, 20):
        other = make_prompts(1, "train", seed, tags=("position",))[0]
        wrong = render(sample_scene(other, np.random.default_rng(seed)))
        if not evaluate(wrong, meta)[0]:
            return meta["prompt"], right, wrong
    raise AssertionError("no wrong image found")


def test_scores_right_and_wrong_and_sends_openai_vision_request(server, scene, monkeypatch):
    prompt, right, wrong = scene
    judge = OpenAIJudge(server.url, "qwen-vl", api_key="sk-test")
    assert judge.score(prompt, right) == 1.0
    assert judge.score(prompt, wrong) == 0.0
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("qwen-vl", 0, 16)
    image_part, text_part = body["messages"][0]["content"]
    assert body["messages"][0]["role"] == "user"
    assert text_part == {"type": "text", "text": QUESTION.format(prompt=prompt)}
    sent = server.decode(image_part["image_url"]["url"])
    assert sent.dtype == np.uint8 and np.array_equal(sent, right)
    assert np.array_equal(
        server.decode(server.requests[1]["body"]["messages"][0]["content"][0]["image_url"]["url"]), wrong
    )

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert OpenAIJudge(server.url + "/", "qwen-vl").score(prompt, right) == 1.0  # trailing slash is fine
    assert "Authorization" not in server.requests[-1]["headers"]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    OpenAIJudge(server.url, "qwen-vl").score(prompt, right)
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-env"
    assert "sk-env" not in repr(OpenAIJudge(server.url, "m", api_key="sk-env"))


def test_unreachable_names_url_and_attempts(scene):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.monotonic()
    with pytest.raises(JudgeError) as err:
        OpenAIJudge(url, "m", retries=2, backoff=0.01).score(scene[0], scene[1])
    assert time.monotonic() - start < 2
    msg = str(err.value)
    assert url in msg and "3 attempts" in msg and "--r3.judge self / evaluator" in msg


def test_retries_5xx_but_not_4xx(server, scene):
    prompt, right, _ = scene
    judge = OpenAIJudge(server.url, "m", retries=2, backoff=0.01)
    server.cfg["statuses"] = [500, 503]
    assert judge.score(prompt, right) == 1.0
    assert len(server.requests) == 3

    server.requests.clear()
    server.cfg["statuses"] = [500] * 5
    with pytest.raises(JudgeError, match="HTTP 500") as err:
        judge.score(prompt, right)
    assert len(server.requests) == 3 and "forced" in str(err.value)

    server.requests.clear()
    server.cfg["statuses"] = [400]
    with pytest.raises(JudgeError, match="HTTP 400"):
        judge.score(prompt, right)
    assert len(server.requests) == 1


@pytest.mark.parametrize("content", ["maybe", "1.5", "-0.5", ""])
def test_bad_answers_raise_and_quote_content(server, scene, content):
    server.cfg["content"] = content
    with pytest.raises(JudgeError) as err:
        OpenAIJudge(server.url, "m").score(scene[0], scene[1])
    assert repr(content) in str(err.value)


@pytest.mark.parametrize(
    "content,value",
    [
        ("0.75", 0.75),
        (" .5\n", 0.5),
        ("1", 1.0),
        ("1e-3", 0.001),
        ('{"score": 0.25, "why": "the circle is missing"}', 0.25),
        ("The square is left of the circle.\nScore: 0.6", 0.6),
        ("score = 1.", 1.0),
    ],
)
def test_the_answer_contract_reads_the_stated_score(server, scene, content, value):
    server.cfg["content"] = content
    assert OpenAIJudge(server.url, "m").score(scene[0], scene[1]) == value


@pytest.mark.parametrize(
    "content",
    ["On a scale of 0 to 1: 0.9", "0 - no match", "Score: 0.9\nactually 0.1", '{"score": "high"}', '{"score": true}'],
)
def test_ambiguous_answers_are_errors_not_the_first_number(server, scene, content):
    server.cfg["content"] = content
    with pytest.raises(JudgeError, match="expected a number in \\[0, 1\\], alone"):
        OpenAIJudge(server.url, "m").score(scene[0], scene[1])


def test_429_waits_its_retry_after_then_succeeds(server, scene):
    server.cfg["statuses"] = [(429, {"Retry-After": "0.3"})]
    start = time.monotonic()
    assert OpenAIJudge(server.url, "m", retries=1, backoff=0.01).score(scene[0], scene[1]) == 1.0
    assert time.monotonic() - start >= 0.3 and len(server.requests) == 2
    server.requests.clear()
    server.cfg["statuses"] = [(429, {"Retry-After": "3600"})]  # an outage: reported, not waited out
    with pytest.raises(JudgeError, match="HTTP 429 after 1 attempts"):
        OpenAIJudge(server.url, "m", retries=3).score(scene[0], scene[1])
    assert len(server.requests) == 1


def test_a_reset_connection_is_retried(server, scene):
    server.cfg["resets"] = 1
    assert OpenAIJudge(server.url, "m", retries=1, backoff=0.01).score(scene[0], scene[1]) == 1.0
    assert len(server.requests) == 2
    server.cfg["resets"] = 2
    with pytest.raises(JudgeError, match="unreachable after 2 attempts"):
        OpenAIJudge(server.url, "m", retries=1, backoff=0.01).score(scene[0], scene[1])


def test_a_key_over_plain_http_to_another_host_is_warned_about(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.warns(UserWarning, match="API key .* plain http to judge.example.com"):
        OpenAIJudge("http://judge.example.com/v1", "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OpenAIJudge("http://127.0.0.1:8000/v1", "m")  # loopback: the key never leaves the machine
        OpenAIJudge("https://judge.example.com/v1", "m")
        monkeypatch.delenv("OPENAI_API_KEY")
        OpenAIJudge("http://judge.example.com/v1", "m")  # no key to leak


def test_a_reply_trickled_past_the_timeout_is_not_accepted(server, scene):
    server.cfg["trickle"] = 1.5
    start = time.monotonic()
    with pytest.raises(JudgeError, match="not complete within the 0.5 s timeout"):
        OpenAIJudge(server.url, "m", timeout=0.5, retries=0).score(scene[0], scene[1])
    assert time.monotonic() - start < 1.2


def test_wrong_json_shape_names_missing_field(server, scene):
    server.cfg["content"] = None
    judge = OpenAIJudge(server.url.replace("/v1", "/nope"), "m")
    with pytest.raises(JudgeError, match="HTTP 404"):
        judge.score(scene[0], scene[1])
    for answer, field in [({"choices": []}, "choices[0]"), ({"x": 1}, "choices"), ({"choices": [{}]}, "message")]:
        with pytest.raises(JudgeError, match=re.escape(field)):
            judge._message(json.dumps(answer).encode())
    with pytest.raises(JudgeError, match="content"):
        judge._message(b'{"choices": [{"message": {"role": "assistant"}}]}')
    with pytest.raises(JudgeError, match="JSON"):
        judge._message(b"<html>")


def test_timeout(server, scene):
    server.cfg["sleep"] = 1.0
    start = time.monotonic()
    with pytest.raises(JudgeError, match="timed out") as err:
        OpenAIJudge(server.url, "m", timeout=0.2, retries=0).score(scene[0], scene[1])
    assert time.monotonic() - start < 0.9 and "after 1 attempt (" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"url": "localhost:8000"}, "url"),
        ({"timeout": 0}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_config(kwargs, field):
    with pytest.raises(ValueError, match=field):
        OpenAIJudge(**{"url": "http://127.0.0.1:8000/v1", "model": "m", **kwargs})
