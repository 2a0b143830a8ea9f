"""The OpenRLHF plugin entry: `--plugins umm_plugin.openrlhf.plugin:register` (needs `umm-plugin patch-openrlhf`).

`register(parser)` runs in the driver before parsing: it adds the plugin's flags (`config.py`: `--umm.*`, `--gvu.*`,
`--srum.*`, `--r3.*`) and returns a check that validates them, the model directory and the prompt file before Ray
starts, so bad input fails in one line, not in a worker; the check then registers the advantage estimators with the
parsed config. `register(None)` runs in every Ray worker: it reads the config the driver exported once and registers
the estimators (`gvu_grpo`, and the token-level `srum_dense` and `r3_stage`) and, with `--umm.head.rl`, the
diffusion head's actor extension.
"""

from functools import partial
from pathlib import Path

import torch

from umm_plugin.algos.grpo import group_advantages
from umm_plugin.algos.r3 import segment_advantages
from umm_plugin.algos.srum import dense_group_advantages
from umm_plugin.openrlhf.config import GvUConfig, PluginConfig, R3Config, SRUMConfig, add_flags, plugin_config


def gvu_grpo(rewards: torch.Tensor, cfg: GvUConfig):
    """The `gvu_grpo` estimator: GvU's group normalisation; zero-variance groups logged per sample."""
    adv, flat = group_advantages(rewards.float(), cfg.eps)
    return adv, {"zero_variance_group": flat.float()}


def srum_dense(token_rewards: torch.Tensor, action_mask: torch.Tensor, rewards: torch.Tensor, cfg: SRUMConfig):
    """The `srum_dense` token-level estimator: SRUM's map pooled per image token, normalised within the group."""
    adv = dense_group_advantages(token_rewards.float(), action_mask, cfg.per, cfg.eps, cfg.picture)
    counted = action_mask.sum(-1).clamp(min=1)
    return adv, {"zero_advantage_tokens": ((adv == 0) & (action_mask > 0)).sum(-1) / counted}


def r3_stage(token_rewards: torch.Tensor, action_mask: torch.Tensor, rewards: torch.Tensor, cfg: R3Config):
    """The `r3_stage` token-level estimator: R3's A_text on the text turn, A_img on the image turn (std division
    only with --r3.std_norm)."""
    return segment_advantages(token_rewards.float(), action_mask, rewards.float(), cfg.std_norm), {}


def register_estimators(cfg: PluginConfig) -> None:
    """The plugin's advantage estimators, each bound to its recipe's config."""
    from openrlhf.trainer.ppo_utils.experience_maker import register_advantage_estimator

    register_advantage_estimator("gvu_grpo", partial(gvu_grpo, cfg=cfg.gvu))
    register_advantage_estimator("srum_dense", partial(srum_dense, cfg=cfg.srum), token_level=True)
    register_advantage_estimator("r3_stage", partial(r3_stage, cfg=cfg.r3), token_level=True)


def check(parser, args) -> None:
    """Driver side, before Ray starts: every problem a user can fix becomes one parser error line."""
    from umm_plugin.models.umm import UMM, ModelError
    from umm_plugin.worlds.grammar import PromptError, load_prompts

    try:
        cfg = PluginConfig.from_namespace(args)
        ours = args.rollout.engine == "umm_plugin.openrlhf.engine:create_engines"
        if cfg.umm.judge.weights == "reference" and args.ds.lora.rank <= 0 and not ours:
            raise ValueError(
                "--umm.judge.weights reference without LoRA needs the UMM engine (its frozen copy of the base): use "
                "LoRA (--ds.lora.rank > 0, the reference is the adapter off) or --rollout.engine "
                "umm_plugin.openrlhf.engine:create_engines"
            )
        if cfg.umm.head.rl and not ours:
            # vLLM serves the backbone only: the head's weights would have nowhere to go at a sync.
            raise ValueError("--umm.head.rl needs --rollout.engine umm_plugin.openrlhf.engine:create_engines")
        model_dir = Path(args.actor.model_name_or_path or "")
        if (model_dir / "umm_config.json").is_file():
            UMM.from_pretrained(model_dir)
            for path in (args.data.prompt_dataset, args.eval.dataset):
                if path:  # GenEval JSONL, every prompt in the model's vocabulary; errors name file:line:field
                    load_prompts(path)
        elif not model_dir.is_dir():
            raise ModelError(f"--actor.model_name_or_path {model_dir}: no such model directory")
    except (ValueError, PromptError, ModelError) as e:  # one line, not argparse's 180-line usage first
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    register_estimators(cfg)


def register(parser=None):
    if parser is not None:  # the driver, before parsing: the estimator names must be valid choices already
        add_flags(parser)
        register_estimators(PluginConfig())  # bound to the parsed config by `check`
        return lambda args: check(parser, args)
    cfg = plugin_config()
    register_estimators(cfg)
    if cfg.umm.threads:  # Ray pins workers to one thread unless told otherwise
        torch.set_num_threads(cfg.umm.threads)
    if cfg.umm.head.rl:
        from openrlhf.trainer.ray.ppo_actor import register_actor_extension

        from umm_plugin.openrlhf.head_policy import NAME, HeadPolicy

        register_actor_extension(NAME, HeadPolicy)
    return None
