"""The OpenRLHF plugin entry: `--plugins umm_plugin.openrlhf.plugin:register` (needs `umm-plugin patch-openrlhf`).

`register(parser)` runs in the driver before parsing and `register(None)` in every Ray worker. It adds the `--umm.*`
flags (GvUConfig's fields: rollout, judge weights, evaluation; shared by the recipes), the `--srum.*` flags
(SRUMConfig) and the `--r3.*` flags (R3Config), registers the `gvu_grpo` and the token-level `srum_dense` and
`r3_stage` advantage estimators, and returns a check
that validates the flags, the model directory and the prompt file before Ray starts, so bad input fails in one
line, not in a worker.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from umm_plugin.algos.flow_grpo import ETA_FORMS
from umm_plugin.algos.grpo import group_advantages
from umm_plugin.algos.r3 import segment_advantages
from umm_plugin.algos.srum import dense_group_advantages
from umm_plugin.openrlhf.r3 import R3Config
from umm_plugin.openrlhf.srum import SRUMConfig

JUDGES = ("policy", "reference")


@dataclass
class GvUConfig:
    judge: str = field(
        default="policy",
        metadata={
            "help": "Weights that score: policy (the current policy, as the authors' code) or reference (the base "
            "model: LoRA off, no second copy; fully fine-tuned, one frozen copy in the UMM engine)."
        },
    )
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
    top_k: int = field(default=0, metadata={"help": "Image-token sampling top-k (0 = off)."})
    min_p: float = field(default=0.03, metadata={"help": "Image-token sampling min-p (GvU: 0.03)."})
    eval_steps: int = field(
        default=10, metadata={"help": "Every this many weight syncs the engine evaluates on held-out prompts."}
    )
    eval_n: int = field(default=200, metadata={"help": "Held-out ShapesWorld prompts per evaluation."})
    log_dir: str = field(
        default="", metadata={"help": "Curves, grids and engine checkpoints; '' = <ckpt.output_dir>/umm."}
    )
    threads: int = field(
        default=0, metadata={"help": "torch threads in every Ray worker (0 = Ray's default: one per requested CPU)."}
    )
    head_rl: bool = field(
        default=False,
        metadata={
            "help": "Train the diffusion head too (Flow-GRPO, one SDE step per image; executors that render with "
            "it, R3's, return the step; patches/0008)."
        },
    )
    head_lr: float = field(default=1e-4, metadata={"help": "The head's own AdamW learning rate."})
    head_weight: float = field(default=2.0, metadata={"help": "The head loss's weight in the actor loss (R3: 2.0)."})
    head_kl: float = field(default=0.001, metadata={"help": "Beta of R3's image KL to the starting head (R3: 0.001)."})
    head_clip: float = field(default=0.2, metadata={"help": "PPO clip range of the head's log-prob ratio (R3: 0.2)."})
    head_eta_form: str = field(
        default="r3", metadata={"help": "SDE noise level eta(t): r3 (monotonic, capped at t 0.95) or flow_grpo."}
    )
    head_steps: int = field(
        default=4, metadata={"help": "Denoising steps of a head render; the SDE step is one of the first steps - 1."}
    )

    def __post_init__(self):
        if self.judge not in JUDGES:
            raise ValueError(f"--umm.judge {self.judge!r}: use one of {', '.join(JUDGES)}")
        if self.eps <= 0:
            raise ValueError(f"--umm.eps {self.eps} must be positive")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"--umm.min_p {self.min_p} must be in [0, 1)")
        if self.head_eta_form not in ETA_FORMS:
            raise ValueError(f"--umm.head_eta_form {self.head_eta_form!r}: use one of {', '.join(ETA_FORMS)}")
        if self.head_steps < 2 or min(self.head_lr, self.head_weight, self.head_clip) <= 0 or self.head_kl < 0:
            raise ValueError(
                "--umm.head_steps must be at least 2 (the last step is never the SDE one), --umm.head_lr, "
                "head_weight and head_clip positive, --umm.head_kl not negative"
            )
        for name in ("top_k", "eval_steps", "eval_n", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--umm.{name} {getattr(self, name)} must not be negative")


def true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


def umm_config() -> GvUConfig:
    """The run's GvUConfig, in any process (from the flags the driver exported)."""
    from openrlhf.utils.plugins import plugin_args

    umm = getattr(plugin_args(), "umm", None)
    return GvUConfig(**vars(umm)) if umm is not None else GvUConfig()


def srum_config() -> SRUMConfig:
    from openrlhf.utils.plugins import plugin_args

    srum = getattr(plugin_args(), "srum", None)
    return SRUMConfig(**vars(srum)) if srum is not None else SRUMConfig()


def r3_config() -> R3Config:
    from openrlhf.utils.plugins import plugin_args

    r3 = getattr(plugin_args(), "r3", None)
    return R3Config(**vars(r3)) if r3 is not None else R3Config()


def gvu_grpo(rewards: torch.Tensor):
    """The `gvu_grpo` estimator: GvU's group normalisation; zero-variance groups logged per sample."""
    adv, flat = group_advantages(rewards.float(), umm_config().eps)
    return adv, {"zero_variance_group": flat.float()}


def srum_dense(token_rewards: torch.Tensor, action_mask: torch.Tensor, rewards: torch.Tensor):
    """The `srum_dense` token-level estimator: SRUM's map pooled per image token, normalised within the group."""
    cfg = srum_config()
    adv = dense_group_advantages(token_rewards.float(), action_mask, cfg.per, cfg.eps, cfg.picture)
    counted = action_mask.sum(-1).clamp(min=1)
    return adv, {"zero_advantage_tokens": ((adv == 0) & (action_mask > 0)).sum(-1) / counted}


def r3_stage(token_rewards: torch.Tensor, action_mask: torch.Tensor, rewards: torch.Tensor):
    """The `r3_stage` token-level estimator: R3's A_text on the text turn, A_img on the image turn (std division
    only with --r3.std_norm)."""
    return segment_advantages(token_rewards.float(), action_mask, rewards.float(), r3_config().std_norm), {}


def check(parser, args) -> None:
    """Driver side, before Ray starts: every problem a user can fix becomes one parser error line."""
    from umm_plugin.models.umm import UMM, ModelError
    from umm_plugin.worlds.grammar import PromptError, load_prompts

    try:
        cfg = GvUConfig(**vars(args.umm))
        SRUMConfig(**vars(args.srum))
        R3Config(**vars(args.r3))
        ours = args.rollout.engine == "umm_plugin.openrlhf.engine:create_engines"
        if cfg.judge == "reference" and args.ds.lora.rank <= 0 and not ours:
            raise ValueError(
                "--umm.judge reference without LoRA needs the UMM engine (its frozen copy of the base): use LoRA "
                "(--ds.lora.rank > 0, the reference is the adapter off) or --rollout.engine "
                "umm_plugin.openrlhf.engine:create_engines"
            )
        if cfg.head_rl and not ours:
            # vLLM serves the backbone only: the head's weights would have nowhere to go at a sync.
            raise ValueError("--umm.head_rl needs --rollout.engine umm_plugin.openrlhf.engine:create_engines")
        model_dir = Path(args.actor.model_name_or_path or "")
        if (model_dir / "umm_config.json").is_file():
            UMM.from_pretrained(model_dir)
            for path in (args.data.prompt_dataset, args.eval.dataset):
                if path:  # GenEval JSONL, every prompt in the model's vocabulary; errors name file:line:field
                    load_prompts(path)
        elif not model_dir.is_dir():
            raise ModelError(f"--actor.model_name_or_path {model_dir}: no such model directory")
    except (ValueError, PromptError, ModelError) as e:
        parser.error(str(e))


def register(parser=None):
    from openrlhf.trainer.ppo_utils.experience_maker import register_advantage_estimator

    register_advantage_estimator("gvu_grpo", gvu_grpo)
    register_advantage_estimator("srum_dense", srum_dense, token_level=True)
    register_advantage_estimator("r3_stage", r3_stage, token_level=True)
    if parser is None:  # a Ray worker: Ray pins workers to one thread unless told otherwise
        if umm_config().threads:
            torch.set_num_threads(umm_config().threads)
        if umm_config().head_rl:
            from openrlhf.trainer.ray.ppo_actor import register_actor_extension

            from umm_plugin.openrlhf.head_policy import NAME, HeadPolicy

            register_actor_extension(NAME, HeadPolicy)
        return None
    for prefix, cls in (("umm", GvUConfig), ("srum", SRUMConfig), ("r3", R3Config)):
        for f in dataclasses.fields(cls):
            kind = true_or_false if f.type in (bool, "bool") else type(f.default)
            parser.add_argument(f"--{prefix}.{f.name}", type=kind, default=f.default, help=f.metadata["help"])
    return lambda args: check(parser, args)
