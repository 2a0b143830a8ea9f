"""R3's `openai` judge: V in [0, 1] from any OpenAI-compatible chat-completions endpoint shown the image and prompt.

The authors serve Qwen2.5-VL-72B behind such a server; any URL that speaks the protocol works (vLLM, SGLang, ...).
Unlike the authors' judge prompt, we ask one fixed question (`QUESTION`) for a bare number in [0, 1]. The answer
contract is strict (`parse_score`): the whole answer is one number, or a JSON object with a numeric "score", or its
last line is "Score: x"; anything else is a `JudgeError` quoting the reply, never a silent or misread score. HTTP
429 (after its Retry-After), 5xx and dropped connections are retried; `timeout` bounds each attempt as a whole, a
slowly trickled reply included (why not the `openai` client: its httpx timeouts bound each read, not the request). An
API key (`api_key`, else OPENAI_API_KEY) bound for a non-loopback host over plain http is warned about.
"""

import base64
import http.client
import io
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

QUESTION = (
    'Score from 0 to 1 how well the image matches the prompt "{prompt}": 1 if it matches exactly (every object, '
    "count, colour and position), 0 if not at all. Answer with the number only."
)
# The sign is part of the number so that "-1" is rejected as out of range instead of read as 1.
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
SCORE_LINE = re.compile(r"score\s*[:=]\s*(\S+)", re.IGNORECASE)
MAX_RETRY_AFTER = 30.0  # seconds: a longer Retry-After is an outage, reported rather than waited out


class JudgeError(ValueError):
    """The judge could not give a score; the message says what and what to do."""


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")  # lossless: the judge sees our pixels
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class OpenAIJudge:
    url: str
    model: str
    timeout: float = 30.0
    retries: int = 2
    api_key: str = field(default="", repr=False)  # kept out of repr so a logged config never leaks the key
    backoff: float = 0.5

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ValueError("model must be non-empty: the model name the server serves")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        host = urllib.parse.urlsplit(self.url).hostname or ""
        key = self.api_key or os.environ.get("OPENAI_API_KEY")
        if key and self.url.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
            warnings.warn(f"the API key would travel over plain http to {host}: use an https:// URL", stacklevel=2)

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/chat/completions"

    def score(self, prompt: str, image: np.ndarray) -> float:
        content = [
            {"type": "image_url", "image_url": {"url": png_data_url(image)}},
            {"type": "text", "text": QUESTION.format(prompt=prompt)},
        ]
        request = {"model": self.model, "temperature": 0, "max_tokens": 16}
        request["messages"] = [{"role": "user", "content": content}]
        answer = self._message(self._post(json.dumps(request).encode()))
        value = parse_score(answer)
        if value is None or not 0 <= value <= 1:
            raise JudgeError(
                f"judge at {self.endpoint} answered {answer[:200]!r}: expected a number in [0, 1], alone, as "
                '{"score": x} or on a last line "Score: x"'
            )
        return value

    def _post(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/json"}
        key = self.api_key or os.environ.get("OPENAI_API_KEY", "")  # read per call, so the key is never stored
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request, attempts = urllib.request.Request(self.endpoint, data, headers), self.retries + 1
        for k in range(attempts):
            if k:
                time.sleep(self.backoff * 2 ** (k - 1))  # retry k (from 1) waits backoff * 2**(k-1)
            deadline = time.monotonic() + self.timeout
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    chunks = []
                    while chunk := r.read1(1 << 16):  # whatever has arrived: the deadline holds for a trickle
                        chunks.append(chunk)
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"reply not complete within the {self.timeout} s timeout")
                    return b"".join(chunks)
            except urllib.error.HTTPError as e:  # before URLError: it is one
                body = e.read().decode("utf-8", "replace")[:200]
                transient = e.code == 429 or e.code >= 500  # rate limit or server trouble; a 4xx will not change
                wait = _retry_after(e.headers.get("Retry-After")) if e.code == 429 else None
                if not transient or k == attempts - 1 or (wait is not None and wait > MAX_RETRY_AFTER):
                    tries = f" after {k + 1} attempts" if transient else ""
                    raise JudgeError(f"judge at {self.endpoint} answered HTTP {e.code}{tries}: {body}") from e
                if wait is not None:
                    time.sleep(wait)
            except (OSError, http.client.HTTPException) as e:  # refused, DNS, timeout, dropped connection
                cause = str(e.reason if isinstance(e, urllib.error.URLError) else e) or type(e).__name__
                if k == attempts - 1:
                    tries = f"{attempts} attempt" + "s" * (attempts > 1)
                    raise JudgeError(
                        f"judge at {self.endpoint} unreachable after {tries} ({cause}); "
                        "start the server or use --r3.judge self / evaluator"
                    ) from e
        raise AssertionError("unreachable")

    def _message(self, raw: bytes) -> str:
        try:
            node = json.loads(raw)
        except ValueError as e:
            raise JudgeError(f"judge at {self.endpoint} did not answer JSON: {raw[:200]!r}") from e
        path = ""
        for step in ("choices", 0, "message", "content"):
            path += f"[{step}]" if isinstance(step, int) else f".{step}" if path else step
            try:
                node = node[step]
            except (KeyError, IndexError, TypeError) as e:
                raise JudgeError(f"judge at {self.endpoint} answered JSON without {path!r}: {raw[:200]!r}") from e
        if not isinstance(node, str):
            raise JudgeError(f"judge at {self.endpoint}: {path!r} is {type(node).__name__}, expected a string")
        return node


def parse_score(answer: str) -> float | None:
    """The score a reply states under the contract: the whole reply one number, a JSON object's numeric "score", or
    a last line "Score: x"; None otherwise (never the first number found: "On a scale of 0 to 1: 0.9" is not 0)."""
    text = answer.strip()
    if NUMBER.fullmatch(text):
        return float(text)
    if text.startswith("{"):
        try:
            score = json.loads(text).get("score")
        except (ValueError, AttributeError):
            return None
        return float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None
    last = text.splitlines()[-1].strip() if text else ""
    match = SCORE_LINE.fullmatch(last.rstrip("."))
    return float(match.group(1)) if match and NUMBER.fullmatch(match.group(1)) else None


def _retry_after(value) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by inference servers; it counts as absent)."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None
