"""Janus / Janus-Pro as a `UnifiedModel`, on `transformers`' own `JanusForConditionalGeneration` and `JanusProcessor`.

A checkpoint is the layout of the public converted ones (`deepseek-community/Janus-Pro-1B`, `-7B`): it loads with
`AutoModelForImageTextToText` and `AutoProcessor`, no remote code. Janus draws an image as VQ codes through its own
generation path (`generation_embeddings` -> `generation_aligner` feed a code back in, `generation_head` reads the next
one off the language model's last hidden state) and understands pixels through its SigLIP-style vision encoder, never
its VQ codes. Image tokens are sampled by the plugin's own KV-cached loop, not by `generate(generation_mode="image")`
(broken in transformers 5.15, and it returns no per-token log-probs), and `image_logprobs` re-scores them in one
teacher-forced pass over the same rows, positions and classifier-free guidance, so the two agree.

`build_tiny_janus` writes a random-init Janus of about 0.6 M parameters with a byte-level BPE tokenizer trained
offline, in the same layout, for fast tests.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from umm_plugin.models.generation import SamplingConfig, left_pad, sample_logits

DESCRIBE = "Describe the image."  # an understanding instruction for captions (GvU's judge reads the prompt after it)
ASK = "Is this {prompt}?"  # the yes/no question when a prompt line has no yn_question_list
YES, NO = (" Yes", " yes"), (" No", " no")  # the answer after "<|Assistant|>:" starts with a space
# R3's turns. Janus has no thinking tokens: the plan and the reflection are assistant text that starts with a
# prefilled "<think>" and closes it (the format reward reads "<think>" + what the model wrote).
THINK = " <think>"
PLAN = "{prompt}\nFirst plan the picture inside <think> </think>: its objects, colours, counts and layout."
REFLECT = (
    'This picture was drawn for "{prompt}". Say inside <think> </think> what it shows, then answer "no further '
    'edit needed" if it matches, else say what to change.'
)
REFINE = "Draw {prompt} again. {instruction}"
TINY_MAX_PARAMS = 2_000_000

# Janus's tokens, spelled as in the DeepSeek tokenizer the public checkpoints ship.
BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"

# The conversation format of Janus-Pro ("deepseek" SFT format): "<|User|>: text\n\n<|Assistant|>: answer<eos>", an
# image part is "<image_placeholder>" on its own line. Used by the tiny model; a real checkpoint ships its own.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{ '<|User|>: ' }}"
    "{%- else -%}{{ '<|Assistant|>:' }}{%- if message['content'] -%}{{ ' ' }}{%- endif -%}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{ ('' if loop.first else '\\n') + '<image_placeholder>' + ('' if loop.last else '\\n') }}"
    "{%- else -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n\\n' if message['role'] == 'user' else '" + EOS + "' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|Assistant|>:' }}{%- endif -%}"
)


class JanusUMM:
    """A Janus checkpoint behind the `UnifiedModel` interface: image tokens with CFG, VQ decoding, understanding.

    `model` is the `JanusForConditionalGeneration` (wrap or fine-tune it in place, e.g. with peft: every method calls
    its submodules), `processor` its `JanusProcessor`."""

    def __init__(self, model, processor):
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.describe, self.ask = DESCRIBE, ASK
        vq = model.config.vq_config
        self.image_tokens = vq.num_patches**2
        # In a rollout sequence image code c is token id image_offset + c (the RL view's vocabulary, below).
        self.image_offset = model.config.text_config.vocab_size
        self.image_ids = list(range(self.image_offset, self.image_offset + vq.num_embeddings))
        self.image_size = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
        gen, tok = model.generation_config, self.tokenizer
        self.bos_id = gen.bos_token_id if gen.bos_token_id is not None else tok.bos_token_id
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else tok.pad_token_id
        self.boi_id = tok.convert_tokens_to_ids(processor.image_start_token)
        self.eos_id = tok.eos_token_id
        first = [self._ids(w)[0] for w in YES + NO]
        self.yes_ids, self.no_ids = sorted(set(first[: len(YES)])), sorted(set(first[len(YES) :]))
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"the tokenizer starts {YES} and {NO} with a common token: yes_no cannot tell them apart")

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "JanusUMM":
        """Load the model as `JanusForConditionalGeneration` (`kwargs` go to it, e.g. `dtype`, `device_map`) and the
        processor with `AutoProcessor`. The concrete class, not `AutoModelForImageTextToText`: in an RL worker the
        Auto class maps Janus to the actor's RL view (`janus_for_rl_class`)."""
        from transformers import AutoConfig, AutoProcessor, JanusForConditionalGeneration

        from umm_plugin.models.umm import check_finite

        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"Janus model directory {path} not found (a tiny one: umm-plugin janus tiny --out DIR)"
            )
        kind = AutoConfig.from_pretrained(path).model_type
        if kind != "janus":
            raise ValueError(f"{path} holds a {kind!r} model, not a Janus checkpoint")
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs).eval()
        check_finite(model, path)
        return cls(model, AutoProcessor.from_pretrained(path))

    def save_pretrained(self, path) -> None:
        """Model, generation config and processor (tokenizer, image processor, chat template), reloadable by the Auto
        classes."""
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def backbone(self):
        """The trained module (the whole Janus model): what a rollout engine wraps with LoRA or swaps for a frozen
        reference copy."""
        return self.model

    @backbone.setter
    def backbone(self, module):
        self.model = module

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    # ---- generation ----
    def generation_prompt(self, prompt: str) -> list[int]:
        """BOS, the chat template's user turn and assistant tag, then begin-of-image: what `JanusProcessor` builds for
        `generation_mode="image"` after `apply_chat_template(..., add_generation_prompt=True)`."""
        if not prompt.strip():
            raise ValueError("empty prompt: give a text prompt such as 'a photo of a red stop sign'")
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.processor(text=[text], generation_mode="image").input_ids[0].tolist()

    def unconditional_prompt(self, prompt: str) -> list[int]:
        """Janus's CFG row: the generation prompt with every token but BOS and begin-of-image replaced by pad."""
        return self._unconditional(self.generation_prompt(prompt))

    def _unconditional(self, ids: list[int]) -> list[int]:
        return [t if t in (self.bos_id, self.boi_id) else self.pad_id for t in ids]

    def _rows(self, prompts: list[str], cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids and mask: the conditional rows, then (with CFG) the unconditional ones."""
        return self._pad([self.generation_prompt(p) for p in prompts], cfg)

    def _pad(self, rows: list[list[int]], cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if cfg:
            rows += [self._unconditional(r) for r in rows]
        ids, mask = left_pad(rows, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _guide(logits: torch.Tensor, cfg_scale: float, cfg: bool) -> torch.Tensor:
        if not cfg:
            return logits
        cond, uncond = logits.float().chunk(2)
        return uncond + cfg_scale * (cond - uncond)

    @torch.no_grad()
    def sample_image_tokens(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        generator: torch.Generator | None = None,
        return_logprobs: bool = False,
    ):
        """[B, image_tokens] codes: one prefill, then one cached step per code; with CFG the unconditional prompts are
        extra rows of the batch and both rows are fed the sampled code. With `return_logprobs`, also the [B,
        image_tokens] log-probs of the drawn codes under the guided, tempered distribution (as `image_logprobs`)."""
        rows = [self.generation_prompt(p) for p in prompts]
        return self.sample_rows(rows, sampling, generator, return_logprobs)

    @torch.no_grad()
    def sample_rows(
        self, rows: list[list[int]], sampling, generator=None, return_logprobs: bool = False, pixel_values=None
    ):
        """`sample_image_tokens` after given generation-prompt ids (a rollout engine's requests); `pixel_values`
        (`pixel_values(images)`, the rows' images in order) fill the rows' image placeholders."""
        cfg = sampling.cfg_scale != 1.0
        ids, mask = self._pad(rows, cfg)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        lm, gen_head = self.model.model.language_model, self.model.model.generation_head
        out = lm(
            inputs_embeds=janus_embeds(self.model, ids, pixel_values),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=DynamicCache(config=lm.config),
            use_cache=True,
        )
        codes, logps = [], []
        for step in range(self.image_tokens):
            logits = self._guide(gen_head(out.last_hidden_state[:, -1]).float(), sampling.cfg_scale, cfg)
            code = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.min_p, generator)
            codes.append(code)
            if return_logprobs:
                logp = F.log_softmax(logits / (sampling.temperature or 1.0), -1)
                logps.append(logp.gather(-1, code[:, None]).squeeze(-1))
            if step + 1 == self.image_tokens:
                break
            fed = self.model.prepare_embeddings_for_image_generation(code.repeat(2 if cfg else 1)[:, None])
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            pos = pos[:, -1:] + 1
            out = lm(inputs_embeds=fed, attention_mask=mask, position_ids=pos, past_key_values=out.past_key_values)
        codes = torch.stack(codes, 1).cpu()
        return (codes, torch.stack(logps, 1).cpu()) if return_logprobs else codes

    def image_distribution(self, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """[B, image_tokens, codebook] log-probs of every code at every position given the codes before it: one
        teacher-forced pass over the sampler's rows (CFG rows included), guided and divided by the temperature (1
        when greedy), before top-k / min-p. Gradients flow when called under grad."""
        cfg = sampling.cfg_scale != 1.0
        ids, mask = self._rows(prompts, cfg)
        codes = codes.to(self.device)
        fed = self.model.prepare_embeddings_for_image_generation(codes[:, :-1].repeat(2 if cfg else 1, 1))
        text = self.model.get_input_embeddings()(ids)
        embeds = torch.cat([text, fed.to(text.dtype)], 1)
        mask = torch.cat([mask, mask.new_ones(len(mask), codes.shape[1] - 1)], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state[:, ids.shape[1] - 1 :]
        logits = self._guide(self.model.model.generation_head(hidden).float(), sampling.cfg_scale, cfg)
        return F.log_softmax(logits / (sampling.temperature or 1.0), -1)

    def image_logprobs(self, prompts: list[str], codes: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """[B, image_tokens] log p(code_j | prompt, codes_<j) under the sampler's distribution, with gradients."""
        logp = self.image_distribution(prompts, codes, sampling)
        return logp.gather(-1, codes.to(logp.device)[..., None]).squeeze(-1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """VQ decoder: [B, image_tokens] codes -> uint8 [B, image_size, image_size, 3], as Janus maps [-1, 1] to
        pixels ((x + 1) * 127.5, clipped; the processor's own postprocess needs torchvision for small images)."""
        pixels = self.model.decode_image_tokens(codes.to(self.device)).float()
        return ((pixels + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()

    # ---- understanding ----
    def _understand(self, images: np.ndarray, questions: list[str]):
        """Processor inputs for "<|User|>: <image>\\nquestion\\n\\n<|Assistant|>:" per row (the checkpoint's system
        prompt first when it sets one): left-padded ids, their mask, and the SigLIP pixel values."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True,
            )
            for q in questions
        ]
        enc = self.processor(text=texts, images=list(images), generation_mode="text", padding=True)
        ids, mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)
        pixels = enc.pixel_values.to(self.device, self.model.dtype)
        return ids, mask, pixels

    def text_logprobs(
        self, images: np.ndarray, instruction: str, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(text_j | image, instruction, text_<j) of each text as the assistant's answer (" text" and the end
        token), one teacher-forced pass for the batch. Returns (logp [B, L], mask [B, L]), right-padded."""
        ids, mask, pixels = self._understand(images, [instruction] * len(texts))
        targets = [self._ids(" " + t.strip()) + [self.eos_id] for t in texts]
        width = max(len(t) for t in targets)
        tgt = torch.tensor([t + [self.pad_id] * (width - len(t)) for t in targets], device=self.device)
        tmask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in targets], device=self.device)
        full_mask = torch.cat([mask, tmask], 1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.model(
            input_ids=torch.cat([ids, tgt], 1), pixel_values=pixels, attention_mask=full_mask, position_ids=pos
        ).last_hidden_state[:, ids.shape[1] - 1 : -1]
        logp = F.log_softmax(self.model.lm_head(hidden).float(), -1).gather(-1, tgt[..., None]).squeeze(-1)
        return logp * tmask, tmask.bool()

    @torch.no_grad()
    def yes_no(self, images: np.ndarray, questions: list[str]) -> torch.Tensor:
        """[B] p(" Yes" or " yes") - p(" No" or " no") as the answer's first token."""
        ids, mask, pixels = self._understand(images, questions)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=pos, logits_to_keep=1
        ).logits[:, -1]
        p = logits.float().softmax(-1)
        return (p[:, self.yes_ids].sum(-1) - p[:, self.no_ids].sum(-1)).cpu()

    @torch.no_grad()
    def answer(self, images: np.ndarray, questions: list[str], max_new_tokens: int = 64) -> list[str]:
        """Greedy answers with a KV cache, each up to its end token or `max_new_tokens`."""
        ids, mask, pixels = self._understand(images, questions)
        rows = self.sample_text(ids, mask, pixels, max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]

    @torch.no_grad()
    def sample_text(
        self, ids, mask, pixel_values, max_new_tokens, temperature=0.0, generator=None, stop_strings=(), stop_ids=()
    ):
        """Text after left-padded rows `ids` / `mask` (`pixel_values` fill their image placeholders, or None), with a
        KV cache, from the language-model head over the text vocabulary but the image placeholder (what the
        understanding encoder's features replace, never written): greedy at temperature 0. A row ends at the
        end token, a `stop_ids` token, or once its text ends with one of `stop_strings` (all kept, as vLLM returns
        the token ids), or after `max_new_tokens`. Returns the new token ids per row."""
        ids, mask = ids.to(self.device), mask.to(self.device)
        ends = torch.tensor(sorted({self.eos_id, *stop_ids}), device=self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=janus_embeds(self.model, ids, pixel_values),
            attention_mask=mask,
            position_ids=pos,
            past_key_values=DynamicCache(config=self.model.config.text_config),
            use_cache=True,
            logits_to_keep=1,
        )
        rows: list[list[int]] = [[] for _ in range(len(ids))]
        done = torch.zeros(len(ids), dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, : self.image_offset].float()
            logits[:, self.model.config.image_token_id] = float("-inf")  # an input-only token, with no features
            token = sample_logits(logits, temperature, generator=generator)
            for i in (~done).nonzero().flatten().tolist():
                rows[i].append(int(token[i]))
                if stop_strings and self.tokenizer.decode(rows[i][-16:]).endswith(tuple(stop_strings)):
                    done[i] = True
            done |= torch.isin(token, ends)
            if done.all() or step + 1 == max_new_tokens:
                break
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], 1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return rows

    def pixel_values(self, images: np.ndarray) -> torch.Tensor:
        """The understanding encoder's input [B, 3, S, S] for uint8 images [B, H, W, 3]."""
        values = self.processor.image_processor(images=list(images), return_tensors="pt").pixel_values
        return values.to(self.device, self.model.dtype)

    # ---- R3's turns: plan, reflect, refine ----
    def _text_ids(self, text: str, images=None, special: bool = True) -> list[int]:
        if images is None:
            return self.tokenizer(text, add_special_tokens=special).input_ids
        return self.processor(text=[text], images=list(images), generation_mode="text").input_ids[0].tolist()

    def _user_turn(self, *parts) -> str:
        content = [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def reason_prompt(self, prompt: str) -> list[int]:
        """Stage 1: the user turn asks for a plan and then the picture; the assistant's answer starts with the
        prefilled `<think>`, the model writes the plan and `</think>`, and `after_plan` begins the image."""
        return self._text_ids(self._user_turn(PLAN.format(prompt=prompt)) + THINK)

    def after_plan(self, plan: list[int]) -> list[int]:
        return [self.boi_id]

    def reflect_prompt(self, pixels: np.ndarray, prompt: str) -> list[int]:
        """Stage 2: the picture [H, W, 3] as an understanding input (its placeholders, filled by SigLIP from
        `pixel_values`) and the reflect question; the answer starts with the prefilled `<think>`."""
        return self._text_ids(self._user_turn(None, REFLECT.format(prompt=prompt)) + THINK, [pixels])

    def refine_turn(self, prompt: str, instruction: str) -> list[int]:
        """Appended after the reflect turn and its end token. Janus cannot draw conditioned on an image, so the
        refine turn draws a new picture from the prompt and the edit instruction, the earlier turns (the picture
        among them) in context."""
        text = self._user_turn(REFINE.format(prompt=prompt, instruction=instruction).strip())
        return self._text_ids(text.removeprefix(self.tokenizer.bos_token or ""), special=False) + [self.boi_id]


def janus_embeds(model, ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
    """Input embeddings of token rows for a `JanusForConditionalGeneration`: text ids through the text embedding,
    ids `text_vocab + c` (image code c) through the generation path, and the image placeholders filled with the
    understanding encoder's features of `pixel_values` (the images in row order), as Janus's own forward does."""
    vocab = model.config.text_config.vocab_size
    image = ids >= vocab
    embeds = model.get_input_embeddings()(ids.masked_fill(image, 0))
    if image.any():
        drawn = model.prepare_embeddings_for_image_generation((ids - vocab).clamp(min=0))
        embeds = torch.where(image[..., None], drawn.to(embeds.dtype), embeds)
    seen = ids == model.config.image_token_id
    if pixel_values is None and seen.any():
        raise ValueError("the rows hold image placeholders but no pixel values came with them")
    if pixel_values is not None:
        features = model.model.get_image_features(pixel_values.to(embeds.dtype)).pooler_output
        features = features.reshape(-1, embeds.shape[-1])
        if int(seen.sum()) != len(features):
            raise ValueError(f"{int(seen.sum())} image placeholders in the rows for {len(features)} image features")
        embeds = embeds.masked_scatter(seen[..., None], features.to(embeds.dtype))
    return embeds


def janus_for_rl_class():
    """`JanusForConditionalGeneration` seen as one causal LM over text and image tokens, the form an RL trainer's
    actor scores sequences in (OpenRLHF's `Actor.forward`: `model(ids, attention_mask, position_ids).logits`).

    Token id `text_vocab + c` is image code c: it is embedded through the generation path (generation embeddings +
    aligner), and the position before it is scored by the generation head, every other position by the language
    model head. Logits cover text + image ids, each position masked to the vocabulary its next token comes from,
    which is how the sampler drew it (image codes from the generation head alone, without CFG as RL rollouts
    sample), so log-softmax at an image position equals the sampler's log-prob of that code. `pixel_values` (OpenRLHF
    passes a VLM's `mm_train_inputs` to the forward) fill the image placeholders of understanding turns (R3's
    reflection). The weights and the saved checkpoint are Janus's own."""
    from transformers import JanusForConditionalGeneration
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class JanusForRL(JanusForConditionalGeneration):
        def forward(self, input_ids, attention_mask=None, position_ids=None, pixel_values=None, **kwargs):
            if position_ids is None and attention_mask is not None:  # left padding, as the sampler counts positions
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            image = input_ids >= self.config.text_config.vocab_size
            embeds = janus_embeds(self, input_ids, pixel_values)
            hidden = self.model.language_model(
                inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            text, codes = self.lm_head(hidden).float(), self.model.generation_head(hidden).float()
            next_is_image = torch.roll(image, -1, 1)[..., None]  # position t scores token t + 1
            low = torch.finfo(text.dtype).min
            logits = torch.cat([text.masked_fill(next_is_image, low), codes.masked_fill(~next_is_image, low)], -1)
            return CausalLMOutputWithPast(logits=logits)

        def save_pretrained(self, save_directory, *args, **kwargs):
            """Janus's own checkpoint: the class it reloads as in `config.json`, and the image processor settings of
            the directory it came from (OpenRLHF's actor saves the tokenizer alone)."""
            super().save_pretrained(save_directory, *args, **kwargs)
            self.config.architectures = ["JanusForConditionalGeneration"]
            self.config.to_json_file(Path(save_directory) / "config.json")
            source, target = Path(self.name_or_path) / "processor_config.json", Path(save_directory)
            if source.is_file() and not (target / source.name).exists():
                target.joinpath(source.name).write_bytes(source.read_bytes())

    return JanusForRL


def _tiny_tokenizer():
    """A byte-level BPE tokenizer with Janus's special tokens, trained offline on the words of test prompts, the
    system prompt and ShapesWorld's grammar: every string encodes (bytes at worst), common words are one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    from umm_plugin.worlds.grammar import WORDS

    specials = [BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]
    words = (
        "a photo of the an image picture is there this in on to left right above below and with two three four "
        "red orange yellow green blue purple pink brown black white gray stop sign person car dog cat bird bus "
        "train truck boat bench chair cup bottle clock apple banana pizza cake umbrella horse sheep cow"
    )
    corpus = [DEFAULT_SYSTEM_PROMPT, DESCRIBE, "Is this a photo of a red stop sign? Yes No yes no", words]
    corpus = (corpus + [" ".join(WORDS)]) * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI},
    )


def tiny_janus_config(vocab_size: int, special: dict[str, int]):
    """The tiny `JanusConfig` (the shapes of transformers' own Janus tests, grown to 16 image tokens): llama hidden
    32 x 2 layers; SigLIP 32 px, patch 8 (4 x 4 = 16 image tokens); VQ with 64 codes decoding 4 x 4 codes to 32 px
    (three upsamplings), base_channels 32 because its GroupNorm has 32 groups."""
    from transformers import JanusConfig

    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=special["pad"],
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        num_image_tokens=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        projection_dim=32,
        depth=2,
    )
    vq = dict(
        embed_dim=8,
        num_embeddings=64,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 1, 1],
        num_res_blocks=2,
        projection_dim=32,
        image_token_embed_dim=32,
        num_hidden_layers=2,
    )
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=special["image"])


def janus_pro_1b_config(vocab_size: int, special: dict[str, int], grid: int = 24):
    """A `JanusConfig` of Janus-Pro-1B's shapes (about 1.9 B parameters, 7.5 GB in fp32) for benchmarks: llama
    hidden 2048 x 24 layers (16 heads, MLP 5632); SigLIP-L (1024 x 24 layers, patch 16); VQ with 16384 codes, image
    embedding 2048; `grid` x `grid` image tokens at 16 `grid` pixels (the checkpoint: 24, 384 px). The text vocabulary
    is `vocab_size` (the checkpoint's: 102400)."""
    from transformers import JanusConfig

    text = dict(
        model_type="llama",
        vocab_size=vocab_size,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=16384,
        pad_token_id=special["pad"],
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
    )
    vision = dict(image_size=16 * grid, patch_size=16, num_image_tokens=grid * grid)
    vq = dict(num_patches=grid)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=special["image"])


def random_janus(shape: str = "tiny", seed: int = 0, grid: int = 24) -> JanusUMM:
    """A seeded random-init Janus with the tiny tokenizer and a processor of its image size: `shape` "tiny" (about
    0.6 M parameters, 16 image tokens) or "1b" (Janus-Pro-1B's shapes, `janus_pro_1b_config`, vocabulary 102400,
    `grid` x `grid` image tokens; 7.5 GB in fp32: benchmarks only)."""
    from transformers import GenerationConfig, JanusForConditionalGeneration, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    tokenizer = _tiny_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    special = {"bos": ids(BOS), "eos": ids(EOS), "pad": ids(PAD), "image": ids(IMAGE)}
    if shape == "tiny":
        config = tiny_janus_config(len(tokenizer), special)
        with torch.device("meta"):  # count before allocating anything
            n = sum(p.numel() for p in JanusForConditionalGeneration(config).parameters())
        if n > TINY_MAX_PARAMS:
            raise ValueError(f"tiny Janus would have {n} parameters, over {TINY_MAX_PARAMS}")
    elif shape == "1b":
        config = janus_pro_1b_config(102400, special, grid)
    else:
        raise ValueError(f"shape {shape!r}: tiny or 1b")
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
        temperature=1.0,
        guidance_scale=5.0,
        generation_kwargs={"boi_token_id": ids(BOI)},  # where `JanusForConditionalGeneration.generate` reads it
    )
    vision = config.vision_config
    image_processor = JanusImageProcessorPil(
        size={"height": vision.image_size, "width": vision.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        min_size=14,
    )
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        use_default_system_prompt=True,
        num_image_tokens=vision.num_image_tokens,
    )
    return JanusUMM(model, processor)


def build_tiny_janus(out_dir, seed: int = 0) -> JanusUMM:
    """Write a seeded random-init Janus (about 0.6 M parameters) in the public checkpoints' layout: config.json,
    model.safetensors, generation_config.json (CFG pad / BOS / begin-of-image ids), tokenizer, processor_config.json
    (image processor, 16 placeholders per image, the default system prompt on) and chat_template.jinja."""
    umm = random_janus("tiny", seed)
    umm.save_pretrained(out_dir)
    return umm
