"""The unified multimodal model: text tokenizer + visual tokenizer + AR backbone + diffusion head, in one directory.

Layout on disk (one HF-format directory, no pickle, no remote code):
    config.json, model.safetensors        the backbone, a stock `transformers` Qwen2ForCausalLM
    tokenizer.json, tokenizer_config.json the text tokenizer (word level, built locally), image codes included
    umm_config.json                       the image layout (X-Omni: image token id = text vocab size + code)
    visual_tokenizer/                     image <-> codes
    diffusion_head/, scheduler/           a diffusers model + FlowMatchEulerDiscreteScheduler, codes -> pixels
The backbone directory is what vLLM or `AutoModelForCausalLM.from_pretrained` loads; everything image-specific sits
beside it. Chat layout (no system message at this size): `<user> ... <assistant> ...`, and an image is
`<SOM> h w <IMAGE> codes... <EOM>` as in X-Omni, with an `<EOL>` after every row of codes as in Emu3 and
Lumina-mGPT: in a flat raster a tiny generator cannot tell where a row ends and draws shapes that wrap from the right
edge onto the next row's left edge (a quarter of the weak base's samples did, and their captions were 3% right).
"""

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from umm_plugin.models.diffusion_head import DiffusionHead, make_scheduler
from umm_plugin.models.generation import continuation_logprobs, generate_image_tokens, generate_text, left_pad
from umm_plugin.models.visual_tokenizer import PatchVQ

SPECIALS = "<pad> <eos> <unk> <user> <assistant> <SOM> <EOM> <IMAGE> <think> </think> <EOL>".split()
# Words of the instructions the tiny model is trained on (the world's own words come from its grammar).
TASK_WORDS = (
    "generate : describe the image . check edit no further needed add remove make at top middle bottom center "
    "is this ? yes"
)
FORMAT = "umm-plugin/2"  # 2: an <EOL> token ends every row of image codes
DESCRIBE = "describe the image ."  # the understanding instruction: captions, GvU's judge
ASK = "is this {prompt} ?"  # the yes/no question: SRUM's and R3's self-judge


MARKER = ".umm-plugin"  # in every directory the plugin writes into: what it may overwrite
MAX_BACKBONE_PARAMS = 100_000_000  # a ShapesWorld backbone has about 1 M; more is another model's config.json


class ModelError(ValueError):
    """A model directory or model input that cannot be used; the message says what and what to do."""


def claim_dir(path) -> Path:
    """Make `path` an output directory of the plugin: create it (or adopt it when empty) and mark it. A non-empty
    directory without the marker holds someone else's files, which the plugin never overwrites: refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"output {path} is a file; name a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).is_file():
        raise ModelError(
            f"output directory {path} holds files umm-plugin did not write (no {MARKER} marker); it never overwrites "
            "them: name a new or empty directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).touch()
    return path


def check_finite(module: torch.nn.Module, path) -> None:
    """Refuse weights holding NaN or inf at load, naming the tensor (they would only surface as a sampling error)."""
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise ModelError(
                f"{path}: weight {name} holds NaN or inf; the checkpoint is corrupt (save or train it again)"
            )


def save_atomically(model, final) -> Path:
    """`model.save_pretrained` into `final` so that a kill at any moment leaves a complete model there or beside it:
    written to `.<name>.tmp` and synced to disk, the old one renamed to `.<name>.old`, the new one renamed into
    place, then the old one deleted (never deleted first)."""
    final = Path(final)
    tmp, old = final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def torch_save_atomically(obj, path) -> None:
    """`torch.save(obj)` to `path`: written beside, synced to disk, renamed (a kill leaves the last complete file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def image_code_token(code: int) -> str:
    return f"<img_{code}>"


def build_tokenizer(words, num_codes: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: specials, digits, `words`, then one token per image code (ids = text vocab + code)."""
    text = list(dict.fromkeys(SPECIALS + [str(d) for d in range(10)] + TASK_WORDS.split() + list(words)))
    vocab = {w: i for i, w in enumerate(text + [image_code_token(c) for c in range(num_codes)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", padding_side="left"
    )


@dataclass
class ImageLayout:
    """Where images live in the vocabulary and how an image is written in a sequence."""

    image_offset: int  # id of code 0 = size of the text vocabulary
    num_codes: int
    grid: int
    som: int
    eom: int
    image: int
    size_ids: tuple[int, int]  # the "h w" tokens
    eol: int  # ends every row of codes

    @property
    def length(self) -> int:
        """Image tokens between <IMAGE> and <EOM>: grid rows of grid codes and an <EOL>."""
        return self.grid * (self.grid + 1)

    @property
    def code_ids(self) -> list[int]:
        """The image vocabulary: the token ids of codes 0..num_codes-1 (<EOL> is not one)."""
        return list(range(self.image_offset, self.image_offset + self.num_codes))

    def image_prefix(self) -> list[int]:
        return [self.som, *self.size_ids, self.image]

    def tokens(self, codes) -> list[int]:
        """[grid*grid] codes -> the `length` token ids that follow <IMAGE>: each row's codes, then <EOL>."""
        return self.spread([self.image_offset + int(c) for c in codes], self.eol)

    def codes(self, tokens) -> torch.Tensor:
        """The inverse of `tokens`; anything else (a row end out of place, a text token) is an error naming it."""
        t = torch.as_tensor(list(tokens), dtype=torch.long)
        ends = torch.arange(1, len(t) + 1) % (self.grid + 1) == 0
        if len(t) != self.length or not (t[ends] == self.eol).all():
            raise ModelError(
                f"image tokens must be {self.grid} rows of {self.grid} codes each ended by <EOL> (id "
                f"{self.eol}); got {len(t)} tokens with <EOL> at {torch.nonzero(t == self.eol).flatten().tolist()}"
            )
        codes = t[~ends] - self.image_offset
        if codes.min() < 0 or codes.max() >= self.num_codes:
            raise ModelError(
                f"image tokens hold ids outside the image vocabulary [{self.image_offset}, "
                f"{self.image_offset + self.num_codes})"
            )
        return codes

    def spread(self, values, fill=0.0) -> list:
        """One value per code -> one per image token (`fill` at each <EOL>): token rewards and weights."""
        v, g = list(values), self.grid
        return [x for r in range(g) for x in v[r * g : (r + 1) * g] + [fill]]

    def wrap(self, codes) -> list[int]:
        return self.image_prefix() + self.tokens(codes) + [self.eom]


class UMM:
    def __init__(self, backbone: Qwen2ForCausalLM, tokenizer, vq: PatchVQ, head: DiffusionHead, scheduler):
        self.backbone, self.tokenizer, self.vq, self.head, self.scheduler = backbone, tokenizer, vq, head, scheduler
        ids = tokenizer.convert_tokens_to_ids
        g = str(vq.grid)
        self.layout = ImageLayout(
            ids(image_code_token(0)),
            vq.num_codes,
            vq.grid,
            ids("<SOM>"),
            ids("<EOM>"),
            ids("<IMAGE>"),
            (ids(g), ids(g)),
            ids("<EOL>"),
        )
        self.words = set(tokenizer.get_vocab()) - {image_code_token(c) for c in range(vq.num_codes)}

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @classmethod
    def build(cls, words, vq: PatchVQ, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0) -> "UMM":
        """A randomly initialised model (seeded) around a fitted visual tokenizer."""
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(words, vq.num_codes)
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 3,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=512,
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
        )
        backbone = Qwen2ForCausalLM(config).eval()
        head = DiffusionHead(num_codes=vq.num_codes, grid=vq.grid, patch=vq.patch).eval()
        head.set_codebook(vq)
        return cls(backbone, tokenizer, vq, head, make_scheduler())

    # ---- text ----
    def ids(self, text: str) -> list[int]:
        """Token ids of whitespace-separated words; an unknown word is an error naming it, never <unk>."""
        words = text.split()
        unknown = [w for w in words if w not in self.words]
        if unknown:
            raise ModelError(f"unknown word {unknown[0]!r} in {text!r}: this model's vocabulary does not have it")
        return self.tokenizer.convert_tokens_to_ids(words)

    def chat(self, *user_parts, answer_prefix=()) -> list[int]:
        """`<user> parts <assistant> answer_prefix` where a part is text or a 1-D tensor of image codes."""
        ids = [self.tokenizer.convert_tokens_to_ids("<user>")]
        for part in user_parts:
            ids += self.ids(part) if isinstance(part, str) else self.layout.wrap(part)
        return ids + [self.tokenizer.convert_tokens_to_ids("<assistant>")] + list(answer_prefix)

    def generation_prompt(self, prompt: str) -> list[int]:
        """Ids up to and including <IMAGE>: the model continues with grid*grid codes. '' is the CFG unconditional."""
        if prompt and not prompt.split():
            raise ModelError("empty prompt: give a text prompt such as 'a photo of a red circle'")
        return self.chat(f"generate : {prompt}".strip(), answer_prefix=self.layout.image_prefix())

    # ---- R3's turns (pretraining, the R3 agent and its evaluation build them here, so they cannot drift) ----
    def reason_prompt(self, prompt: str) -> list[int]:
        """Stage 1: the model continues with `<think> plan </think>` and then the image (or the image right away)."""
        return self.chat(f"generate : {prompt}")

    def after_plan(self, plan: list[int]) -> list[int]:
        """The image prefix that follows a plan turn; a plan that ended by writing `<SOM>` has its first token."""
        prefix = self.layout.image_prefix()
        return prefix[1:] if plan[-1:] == prefix[:1] else prefix

    def reflect_prompt(self, codes, prompt: str) -> list[int]:
        """The model answers `<think> what it sees </think>` then "no further edit needed" or an edit instruction."""
        return self.chat(codes, f"check : {prompt}")

    def refine_turn(self, instruction: list[int], codes) -> list[int]:
        """Appended after the reflect turn (its answer and end token): the model continues with the edited image.

        The turn shows the image being edited again, right before the answer: every code to keep is then at one fixed
        distance back, which a small model learns to copy; across the varying reflection it only learned ~70 %."""
        user, assistant = self.tokenizer.convert_tokens_to_ids(["<user>", "<assistant>"])
        shown = self.layout.wrap(codes)
        return [user, *self.ids("edit :"), *instruction, *shown, assistant, *self.layout.image_prefix()]

    # ---- the model interface (models/interface.py): images in and out as pixels ----
    describe, ask = DESCRIBE, ASK

    @property
    def image_tokens(self) -> int:
        return self.vq.grid**2

    @property
    def image_size(self) -> int:
        return self.vq.grid * self.vq.patch

    def unconditional_prompt(self, prompt: str) -> list[int]:
        """The CFG row: the generation prompt without its text."""
        return self.generation_prompt("")

    @torch.no_grad()
    def sample_image_tokens(self, prompts: list[str], sampling, generator=None) -> torch.Tensor:
        """[B, grid * grid] codes from the KV-cached generator (<EOL> fed after every row)."""
        rows = [self.generation_prompt(p) for p in prompts]
        uncond = [self.unconditional_prompt(p) for p in prompts]
        pad = self.tokenizer.pad_token_id
        return generate_image_tokens(
            self.backbone, self.layout, rows, uncond, sampling=sampling, generator=generator, pad_id=pad
        )

    def image_logprobs(self, prompts: list[str], codes: torch.Tensor, sampling) -> torch.Tensor:
        """[B, grid * grid] log p(code_j | prompt, image tokens before it): one teacher-forced pass over the sampler's
        rows (CFG rows included), logits cut to the codes, guided, divided by the temperature (1 when greedy)."""
        lay, cfg = self.layout, sampling.cfg_scale != 1.0
        rows = [self.generation_prompt(p) for p in prompts]
        rows += [self.unconditional_prompt(p) for p in prompts] if cfg else []
        fed = [r + lay.tokens(c)[:-1] for r, c in zip(rows, codes.repeat(2 if cfg else 1, 1))]
        ids, mask = left_pad(fed, self.tokenizer.pad_token_id)
        dev = self.backbone.device
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # Left padding aligns the image tokens at the end; the position before a token predicts it.
        at = [r * (lay.grid + 1) + c for r in range(lay.grid) for c in range(lay.grid)]
        where = torch.tensor(at) + ids.shape[1] - (lay.length - 1) - 1
        hidden = self.backbone.get_decoder()(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev)
        ).last_hidden_state[:, where.to(dev)]
        logits = self.backbone.get_output_embeddings()(hidden)[
            ..., lay.image_offset : lay.image_offset + lay.num_codes
        ]
        logits = logits.float()
        if cfg:
            cond, uncond = logits.chunk(2)
            logits = uncond + sampling.cfg_scale * (cond - uncond)
        logp = torch.log_softmax(logits / (sampling.temperature or 1.0), -1)
        return logp.gather(-1, codes.to(dev)[..., None]).squeeze(-1)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """The codebook render (the diffusion head reproduces it exactly)."""
        return self.vq.decode(codes)

    def text_logprobs(self, images: np.ndarray, instruction: str, texts: list[str]):
        """log p(text_j | image, instruction, text_<j) with the end token last, the image read back as its codes
        (exact for the codebook renders this model draws). Returns (logp [B, L], mask [B, L]), right-padded."""
        eos = [self.tokenizer.eos_token_id]
        prefixes = [self.chat(c, instruction) for c in self.vq.encode(images)]
        targets = [self.ids(t) + eos for t in texts]
        return continuation_logprobs(self.backbone, prefixes, targets, pad_id=self.tokenizer.pad_token_id)

    @torch.no_grad()
    def yes_no(self, images: np.ndarray, questions: list[str]) -> torch.Tensor:
        """[B] p(yes) - p(no) as the answer's first word."""
        return self.yes_no_codes(self.vq.encode(images), questions)

    @torch.no_grad()
    def yes_no_codes(self, codes: torch.Tensor, questions: list[str], yes="yes", no="no") -> torch.Tensor:
        """[B] p(first answer word in `yes`) - p(first in `no`) for images given as codes: one forward pass, reading
        only the next-token distribution after `<assistant>`."""
        rows = [self.chat(c, q) for c, q in zip(codes, questions, strict=True)]
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        dev = self.backbone.device
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.backbone(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), logits_to_keep=1
        ).logits[:, -1]
        p = logits.float().softmax(-1)
        return (p[:, self.ids(yes)].sum(-1) - p[:, self.ids(no)].sum(-1)).cpu()

    @torch.no_grad()
    def answer(self, images: np.ndarray, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy text answers (text vocabulary only), up to the end token."""
        rows = [self.chat(c, q) for c, q in zip(self.vq.encode(images), questions, strict=True)]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        out = generate_text(self.backbone, rows, max_new_tokens, eos, self.layout.image_offset, pad_id=pad)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in out]

    # ---- persistence ----
    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        self.vq.save_pretrained(path / "visual_tokenizer")
        self.head.save_pretrained(path / "diffusion_head", safe_serialization=True)
        self.scheduler.save_pretrained(path / "scheduler")
        layout = {k: v for k, v in self.layout.__dict__.items()}
        (path / "umm_config.json").write_text(json.dumps({"format": FORMAT, **layout}, indent=1))

    @classmethod
    def from_pretrained(cls, path) -> "UMM":
        from diffusers import FlowMatchEulerDiscreteScheduler

        path = Path(path)
        if not path.is_dir():
            raise ModelError(
                f"model directory {path} not found: create one with `umm-plugin shapes pretrain --out {path}`"
            )
        for need in ("umm_config.json", "config.json", "model.safetensors", "tokenizer.json"):
            if not (path / need).is_file():
                raise ModelError(f"model directory {path} has no {need}: it is not a complete umm-plugin model")
        try:
            meta = json.loads((path / "umm_config.json").read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path / 'umm_config.json'} is not valid JSON ({e.msg})") from None
        if meta.get("format") != FORMAT:
            raise ModelError(
                f"{path / 'umm_config.json'}: format {meta.get('format')!r}, expected {FORMAT!r} "
                "(saved by another umm-plugin version: pretrain it again with `umm-plugin shapes pretrain`)"
            )
        try:  # the backbone's config, checked before anything is allocated
            config = Qwen2Config.from_pretrained(path)
            kind = json.loads((path / "config.json").read_text()).get("model_type")
        except Exception as e:
            raise ModelError(f"cannot read {path / 'config.json'}: {str(e).strip().splitlines()[0]}") from None
        if kind != "qwen2":
            raise ModelError(f"{path / 'config.json'}: model_type {kind!r}, a ShapesWorld backbone is qwen2")
        with torch.device("meta"):
            n = sum(p.numel() for p in Qwen2ForCausalLM(config).parameters())
        if n > MAX_BACKBONE_PARAMS:
            raise ModelError(
                f"{path / 'config.json'} describes a {n / 1e6:.0f} M-parameter backbone; a ShapesWorld model has "
                "about 1 M (is this another model's config?)"
            )
        parts = {}
        for name, load in (
            ("backbone", lambda: Qwen2ForCausalLM.from_pretrained(path).eval()),
            ("tokenizer", lambda: PreTrainedTokenizerFast.from_pretrained(path)),
            ("visual_tokenizer", lambda: PatchVQ.from_pretrained(path / "visual_tokenizer")),
            ("diffusion_head", lambda: DiffusionHead.from_pretrained(path / "diffusion_head").eval()),
            ("scheduler", lambda: FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")),
        ):
            try:
                parts[name] = load()
            except Exception as e:  # a corrupt or partial file anywhere: name the part, not a torch frame
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ModelError(f"cannot load the {name} from {path}: {first}") from None
        check_finite(parts["backbone"], path)
        check_finite(parts["diffusion_head"], path / "diffusion_head")
        model = cls(
            parts["backbone"],
            parts["tokenizer"],
            parts["visual_tokenizer"],
            parts["diffusion_head"],
            parts["scheduler"],
        )
        if model.layout.image_offset != meta["image_offset"] or model.layout.num_codes != meta["num_codes"]:
            raise ModelError(f"{path}: tokenizer and umm_config.json disagree on the image layout; re-save the model")
        return model
