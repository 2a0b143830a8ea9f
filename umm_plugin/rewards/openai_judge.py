"""R3's `openai` judge: V in [0, 1] from any OpenAI-compatible chat-completions endpoint shown the image and prompt.

The authors serve Qwen2.5-VL-72B behind such a server; any URL that speaks the protocol works (vLLM, SGLang, ...).
Unlike the authors' judge prompt, we ask one fixed question (`QUESTION`) for a bare number in [0, 1] and parse the
first number of the answer; anything else is a `JudgeError`, never a silent 0.
"""

import base64
import http.client
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

QUESTION = (
    'Score from 0 to 1 how well the image matches the prompt "{prompt}": 1 if it matches exactly (every object, '
    "count, colour and position), 0 if not at all. Answer with the number only."
)
# The sign is part of the number so that "-1" is rejected as out of range instead of read as 1.
NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


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
        match = NUMBER.search(answer)
        value = float(match.group()) if match else None
        if value is None or not 0 <= value <= 1:
            raise JudgeError(f"judge at {self.endpoint} answered {answer!r}: expected a number in [0, 1]")
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
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as r:
                    return r.read()
            except urllib.error.HTTPError as e:  # before URLError: it is one
                body = e.read().decode("utf-8", "replace")[:200]
                if e.code < 500 or k == attempts - 1:  # a 4xx will not change on retry; a 5xx may be transient
                    tries = f" after {k + 1} attempts" if e.code >= 500 else ""
                    raise JudgeError(f"judge at {self.endpoint} answered HTTP {e.code}{tries}: {body}") from e
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
