"""Every `train_ppo_ray` flag the plugin adds, as documented dataclasses: one group per flag prefix.

- `--umm.*` (`UMMConfig`): run-wide, whatever the recipe: the judge's weights and external endpoint
  (`--umm.judge.*`), image-token sampling (`--umm.sampling.*`), held-out evaluation (`--umm.eval.*`), the diffusion
  head's policy (`--umm.head.*`), where curves go and how many threads a worker uses.
- `--gvu.*` (`GvUConfig`), `--srum.*` (`SRUMConfig`, also the options of `umm-plugin srum`), `--r3.*` (`R3Config`):
  one group per recipe.

Each field has one default and a help text; `__post_init__` checks the values, so a bad flag is one line before Ray
starts. `PluginConfig.from_namespace` builds the whole tree from OpenRLHF's parsed (dotted) arguments, in the driver
or in a Ray worker (`plugin_config()`); estimators, executors and the engine receive it, none re-reads the flags.
`umm-plugin flags` writes the reference of all of them (docs/flags.md).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from umm_plugin.algos.flow_grpo import ETA_FORMS
from umm_plugin.models.generation import SamplingConfig

WEIGHTS = ("policy", "reference")
SCORERS, PER = ("prob", "caption", "text"), ("position", "sample")
R3_JUDGES = ("self", "evaluator", "openai")


def true_or_false(text: str) -> bool:
    """argparse type of a boolean flag: `--x true` / `--x false` (1 / 0 too)."""
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


@dataclass
class JudgeConfig:
    """Who judges: the weights of the model's own understanding, and an external OpenAI-compatible judge.

    Parameters:
        weights: `policy` (the current policy judges itself, as the GvU authors' code does) or `reference` (the base
            model: the LoRA adapter switched off, or one frozen copy in the rollout engine when fully fine-tuned).
        url, model, timeout, retries: the external judge (R3's `--r3.judge openai`).
    """

    weights: str = field(
        default="policy",
        metadata={
            "help": "Weights that judge: policy (the current policy, as the GvU authors' code) or reference (the "
            "base model: LoRA off, no second copy; fully fine-tuned, one frozen copy in the UMM engine)."
        },
    )
    url: str = field(default="", metadata={"help": "External judge: base URL, e.g. http://127.0.0.1:8000/v1."})
    model: str = field(default="", metadata={"help": "External judge: the model name the server expects."})
    timeout: float = field(default=60.0, metadata={"help": "External judge: seconds per request."})
    retries: int = field(default=2, metadata={"help": "External judge: retries on connection errors and HTTP 5xx."})

    def __post_init__(self):
        if self.weights not in WEIGHTS:
            raise ValueError(f"--umm.judge.weights {self.weights!r}: use one of {', '.join(WEIGHTS)}")
        if self.timeout <= 0 or self.retries < 0:
            raise ValueError(f"--umm.judge.timeout {self.timeout} must be > 0 and --umm.judge.retries >= 0")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--umm.judge.url {self.url!r}: use an http:// or https:// URL")


@dataclass
class EvalConfig:
    """Held-out evaluation inside an RL run: ShapesWorld eval-split prompts, sampled as the rollouts are.

    Parameters:
        steps: every this many weight syncs the rollout engine evaluates, writes a curve row and grids and saves
            the policy (0: never).
        n: held-out prompts per evaluation.
    """

    steps: int = field(
        default=10, metadata={"help": "Every this many weight syncs the engine evaluates and saves (0 = never)."}
    )
    n: int = field(default=200, metadata={"help": "Held-out ShapesWorld prompts per evaluation."})

    def __post_init__(self):
        for name in ("steps", "n"):
            if getattr(self, name) < 0:
                raise ValueError(f"--umm.eval.{name} {getattr(self, name)} must not be negative")


@dataclass
class HeadConfig:
    """The diffusion head as a second policy (Flow-GRPO, one SDE step per image; `head_policy.py`).

    Parameters:
        rl: train the head beside the backbone.
        lr, weight, kl, clip: its own AdamW learning rate, its loss's weight in the actor loss, the beta of R3's
            image KL to the starting head, the PPO clip range of its log-prob ratio.
        eta_form, steps: the SDE noise level eta(t) and the denoising steps of a render.
    """

    rl: bool = field(
        default=False,
        metadata={
            "help": "Train the diffusion head too (Flow-GRPO, one SDE step per image; executors that render with "
            "it, R3's, return the step; needs the UMM rollout engine)."
        },
    )
    lr: float = field(default=1e-4, metadata={"help": "The head's own AdamW learning rate."})
    weight: float = field(default=2.0, metadata={"help": "The head loss's weight in the actor loss (R3: 2.0)."})
    kl: float = field(default=0.001, metadata={"help": "Beta of R3's image KL to the starting head (R3: 0.001)."})
    clip: float = field(default=0.2, metadata={"help": "PPO clip range of the head's log-prob ratio (R3: 0.2)."})
    eta_form: str = field(
        default="r3", metadata={"help": "SDE noise level eta(t): r3 (monotonic, capped at t 0.95) or flow_grpo."}
    )
    steps: int = field(
        default=4, metadata={"help": "Denoising steps of a head render; the SDE step is one of the first steps - 1."}
    )

    def __post_init__(self):
        if self.eta_form not in ETA_FORMS:
            raise ValueError(f"--umm.head.eta_form {self.eta_form!r}: use one of {', '.join(ETA_FORMS)}")
        if self.steps < 2:
            raise ValueError(f"--umm.head.steps {self.steps} must be at least 2 (the last step is never the SDE one)")
        for name in ("lr", "weight", "clip"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--umm.head.{name} {getattr(self, name)} must be positive")
        if self.kl < 0:
            raise ValueError(f"--umm.head.kl {self.kl} must not be negative")


@dataclass
class UMMConfig:
    """Run-wide settings of every recipe (`--umm.*`).

    Parameters:
        judge, sampling, eval, head: the groups above (`--umm.judge.*`, `--umm.sampling.*`, `--umm.eval.*`,
            `--umm.head.*`). Sampling's temperature is OpenRLHF's `--rollout.temperature`.
        log_dir: where curves, grids and the policy go.
        threads: torch threads in every Ray worker.
    """

    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={"help": "Who judges."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Image-token sampling."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Held-out evaluation."})
    head: HeadConfig = field(default_factory=HeadConfig, metadata={"help": "The diffusion head's policy."})
    log_dir: str = field(
        default="", metadata={"help": "Curves, grids and the policy checkpoint; '' = <ckpt.output_dir>/umm."}
    )
    threads: int = field(
        default=0, metadata={"help": "torch threads in every Ray worker (0 = Ray's default: one per requested CPU)."}
    )

    def __post_init__(self):
        if self.threads < 0:
            raise ValueError(f"--umm.threads {self.threads} must not be negative")


@dataclass
class GvUConfig:
    """GvU's reward and advantage (`--gvu.*`): r = exp(mean_j log p(T_j | image, T_<j)), GRPO within the group.

    Parameters:
        include_eos: also score the end token after the prompt (ours; the authors score the prompt only).
        reencode: judge the pixels re-tokenized (the authors) instead of the generated codes.
        eps: the advantage denominator std + eps.
    """

    include_eos: bool = field(
        default=True,
        metadata={"help": "Score the end token after the prompt too, so extra objects cost reward (authors: false)."},
    )
    reencode: bool = field(
        default=False,
        metadata={
            "help": "Decode with the diffusion head and re-tokenize before judging (authors' way) instead of "
            "judging the generated codes."
        },
    )
    eps: float = field(default=1e-4, metadata={"help": "GRPO advantage denominator: std + eps (GvU: 1e-4)."})

    def __post_init__(self):
        if self.eps <= 0:
            raise ValueError(f"--gvu.eps {self.eps} must be positive")


@dataclass
class SRUMConfig:
    """SRUM's judge, reward map and loss (`--srum.*` online; the options of `umm-plugin srum` offline).

    Parameters:
        k, sam, scorer: regions per image, what proposes them, and how the model scores a region or the whole
            picture.
        local_min, assign, missing, extra, relation: how the scores become a reward map (each false is the
            authors' behaviour).
        lam: the weight of the unweighted reference term of the offline loss.
        per, picture, eps: online, how the map's cells become per-token advantages.
    """

    k: int = field(default=5, metadata={"help": "Regions per image, largest first (authors: 5 or 10)."})
    sam: str = field(
        default="",
        metadata={
            "help": "A SAM checkpoint directory (the layout of facebook/sam-vit-base) whose automatic masks propose "
            "the regions, as the authors do ('': connected components of the picture's colours)."
        },
    )
    scorer: str = field(
        default="prob",
        metadata={
            "help": "prob: p(yes) - p(no) in one pass; caption: 2 p(the model describes it so) - 1; text: parse "
            "the answer the model writes (authors)."
        },
    )
    local_min: bool = field(
        default=False, metadata={"help": "Let a bad region fall below 0.5 (authors: max(0.5, score), false)."}
    )
    assign: bool = field(
        default=False,
        metadata={
            "help": "Each prompt object claims at most its count of regions, best first; leftovers score -1 "
            "(authors: every region scores its best match, false)."
        },
    )
    missing: bool = field(
        default=False,
        metadata={
            "help": "With assign: the background scores 0.5 x the share of the prompt's objects that claimed a "
            "region, so leaving an object out costs where it could have been drawn (authors: 0.5, false)."
        },
    )
    extra: bool = field(
        default=False,
        metadata={
            "help": "With assign: the background is also scaled by the share of regions a prompt object claimed, so "
            "an extra object costs the whole picture as a missing one does (authors: false)."
        },
    )
    relation: bool = field(
        default=False,
        metadata={
            "help": "Prompts with a relation: g becomes (g + r) / 2, r = +1 if the regions the judge gave the two "
            "objects stand in it by GenEval's box rule, else -1 (authors: the VLM's own global answer, false)."
        },
    )
    lam: float = field(default=0.5, metadata={"help": "Weight of the unweighted reference term (authors: 0.5)."})
    per: str = field(
        default="position",
        metadata={"help": "Online: normalise each token's reward within its group per position or per sample."},
    )
    picture: float = field(
        default=0.0,
        metadata={
            "help": "Online: add this x each picture's group advantage of its map mean to all its image tokens, so a "
            "choice that costs the whole map (an extra object) is credited on every token (0: cells only)."
        },
    )
    eps: float = field(default=1e-4, metadata={"help": "Online: advantage denominator std + eps."})

    def __post_init__(self):
        for name, allowed in (("scorer", SCORERS), ("per", PER)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"srum {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if self.k < 1:
            raise ValueError(f"srum k {self.k} must be at least 1")
        if self.sam and not (Path(self.sam) / "config.json").is_file():
            raise ValueError(f"srum sam {self.sam}: no SAM checkpoint there (config.json missing)")
        if self.extra and not self.assign:
            raise ValueError("srum extra needs assign: without it every region counts as a prompt object")
        if self.missing and not self.assign:
            raise ValueError("srum missing needs assign: only assigned regions say which prompt objects were drawn")
        if self.lam < 0 or self.eps <= 0 or self.picture < 0:
            raise ValueError(f"srum lam {self.lam} and picture {self.picture} must be >= 0 and eps {self.eps} > 0")


@dataclass
class R3Config:
    """R3's judge, rewards, stage-2 buffer and evaluation (`--r3.*`).

    Differences from the authors' code, each a switch: the judge may be the policy itself (`self`, what makes R3
    self-rewarding) or ShapesWorld's exact checker (`evaluator`) instead of an external VLM (`openai`, at
    `--umm.judge.url`); V may be the checklist's share (`score`); a stop on an imperfect root may cost
    `stop_penalty`; the buffer may draw imperfect roots by their group's reward spread (`weighting`); advantages may
    be divided by the group's std (`std_norm`). As in the authors' code, stage 2 draws from the last stage-1 step's
    results only. Unlike it, a member that stops keeps V_prev instead of a second verdict on the same image (the
    judges here are deterministic), and a judge that fails is an error, not V = 0.

    Parameters:
        judge, score, caption: who scores V in [0, 1] and how.
        w, stop_penalty, std_norm: the text and stop rewards and the advantage normalisation.
        p_perfect, weighting, buffer_size: how stage 2 draws its roots.
        text_tokens, eval_rounds: the longest plan or reflection, and the rounds of each evaluation.
    """

    judge: str = field(
        default="self",
        metadata={
            "help": "Who scores V in [0, 1]: self (the model's own caption and yes/no against a checklist of the "
            "prompt), evaluator (ShapesWorld's exact checker), openai (an OpenAI-compatible VLM at "
            "--umm.judge.url)."
        },
    )
    score: str = field(
        default="binary",
        metadata={
            "help": "binary: V = 1 when the judge finds the whole prompt satisfied, else 0 (the authors' GenEval "
            "judge answers correct 0/1); checklist: V = the share of the prompt's checklist that holds; staged: "
            "the share in stage 1 (partial credit: more of its groups vary), the verdict in stage 2 and the buffer "
            "(the stop reward and the perfect-root pool need one)."
        },
    )
    caption: str = field(
        default="colours",
        metadata={
            "help": "The self judge's caption: greedy, or colours (greedy, but where it names no colour the first "
            "object's colour is the model's best colour word, then greedy on: a greedy caption skips colours most "
            "of the time, so colour mistakes passed as perfect; bench/r3_judge.py)."
        },
    )
    w: float = field(
        default=1.0, metadata={"help": "Format weight w in R = V F + w F and R = w F + C F (authors: 1)."}
    )
    stop_penalty: float = field(
        default=0.0,
        metadata={
            "help": "C for answering 'no further edit needed' on an imperfect root (V_prev < 1) is -stop_penalty "
            "(ours; the authors' 0 scores that stop like a failed edit; 1 makes a wrong stop cost what a right stop "
            "earns)."
        },
    )
    std_norm: bool = field(
        default=False,
        metadata={
            "help": "Divide each group's centred advantages by its std + 1e-4, as GRPO does (ours; the authors "
            "centre only: a 0/1 V that holds for one member in ten has std .3, so that is ~3x smaller steps)."
        },
    )
    p_perfect: float = field(
        default=0.15,
        metadata={
            "help": "Stage 2 draws its root from the V == 1 pool with this probability (authors: 0.15; recipes/r3.sh "
            "passes 0.575 with --r3.stop_penalty 1)."
        },
    )
    weighting: str = field(
        default="uniform",
        metadata={"help": "uniform (authors) or spread: imperfect roots drawn by their group's V spread."},
    )
    buffer_size: int = field(
        default=4096, metadata={"help": "Most stage-1 results kept as stage-2 roots (the last stage-1 step's)."}
    )
    text_tokens: int = field(default=48, metadata={"help": "Most tokens of a plan or a reflection."})
    eval_rounds: int = field(
        default=4, metadata={"help": "Reflect-refine rounds at each evaluation (auto-stop on 'no further edit')."}
    )

    def __post_init__(self):
        if self.judge not in R3_JUDGES:
            raise ValueError(f"--r3.judge {self.judge!r}: use one of {', '.join(R3_JUDGES)}")
        if self.score not in ("binary", "checklist", "staged"):
            raise ValueError(f"--r3.score {self.score!r}: use binary, checklist or staged")
        if self.caption not in ("greedy", "colours"):
            raise ValueError(f"--r3.caption {self.caption!r}: use greedy or colours")
        if self.weighting not in ("uniform", "spread"):
            raise ValueError(f"--r3.weighting {self.weighting!r}: use uniform or spread")
        if not 0 <= self.p_perfect <= 1:
            raise ValueError(f"--r3.p_perfect {self.p_perfect} must be a probability")
        for name in ("buffer_size", "text_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--r3.{name} {getattr(self, name)} must be at least 1")
        for name in ("eval_rounds", "w", "stop_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"--r3.{name} {getattr(self, name)} must not be negative")


@dataclass
class PluginConfig:
    """All of the plugin's flag groups: `--umm.*`, `--gvu.*`, `--srum.*`, `--r3.*`."""

    umm: UMMConfig = field(default_factory=UMMConfig, metadata={"help": "Run-wide settings."})
    gvu: GvUConfig = field(default_factory=GvUConfig, metadata={"help": "GvU's reward and advantage."})
    srum: SRUMConfig = field(default_factory=SRUMConfig, metadata={"help": "SRUM's judge, map and loss."})
    r3: R3Config = field(default_factory=R3Config, metadata={"help": "R3's judge, rewards and buffer."})

    def __post_init__(self):
        if self.r3.judge == "openai" and not (self.umm.judge.url and self.umm.judge.model):
            raise ValueError(
                "--r3.judge openai needs --umm.judge.url (an OpenAI-compatible server) and --umm.judge.model"
            )

    @classmethod
    def from_namespace(cls, ns) -> "PluginConfig":
        """The config from OpenRLHF's hierarchized arguments (attributes it lacks keep their defaults)."""
        return _build(cls, ns)


def _group(f) -> type | None:
    """The dataclass a field nests (a flag group), or None for a plain flag."""
    return f.default_factory if dataclasses.is_dataclass(f.default_factory) else None


def _build(cls, ns):
    values = {}
    for f in dataclasses.fields(cls):
        if ns is None or not hasattr(ns, f.name) or "flag" in f.metadata:
            continue
        value = getattr(ns, f.name)
        values[f.name] = _build(_group(f), value) if _group(f) else value
    return cls(**values)


def flag_fields(cls=PluginConfig, prefix: str = ""):
    """(flag name, field) of every plain flag under `cls`, depth first: `("umm.sampling.min_p", field)`. Fields that
    are no plugin flag (metadata "flag" says what sets them instead, e.g. OpenRLHF's `--rollout.temperature`) are
    left out."""
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if _group(f):
            yield from flag_fields(_group(f), name + ".")
        elif "flag" not in f.metadata:
            yield name, f


def add_flags(parser) -> None:
    """Every plugin flag on OpenRLHF's parser, with its dataclass default and help."""
    for name, f in flag_fields():
        kind = true_or_false if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{name}", type=kind, default=f.default, help=f.metadata["help"])


def plugin_config() -> PluginConfig:
    """The run's config in any process: from the flag values the driver exported to the Ray workers."""
    from openrlhf.utils.plugins import plugin_args

    return PluginConfig.from_namespace(plugin_args())
