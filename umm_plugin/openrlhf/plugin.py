"""The OpenRLHF plugin entry: `--plugins umm_plugin.openrlhf.plugin:register` (needs `umm-plugin patch-openrlhf`).

`register(parser)` runs in the driver before parsing: it adds the plugin's flags (`config.py`: `--umm.*`, `--gvu.*`,
`--srum.*`, `--r3.*`) and returns a check that validates them, the model directory and the prompt file before Ray
starts, so bad input fails in one line, not in a worker; the check then registers the advantage estimators with the
parsed config. `register(None)` runs in every Ray worker: it reads the config the driver exported once and registers
the estimators (`gvu_grpo`, and the token-level `srum_dense` and `r3_stage`), Janus's RL view as the model class
OpenRLHF's actor loads for a Janus directory, and, with `--umm.head.rl`, the diffusion head's actor extension.
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
        if ours and args.vllm.sync_backend != "gloo":
            raise ValueError(f"--vllm.sync_backend {args.vllm.sync_backend}: the UMM engine syncs weights over gloo")
        if ours and (args.vllm.num_engines or 1) > args.rollout.batch_size:
            raise ValueError(
                f"--vllm.num_engines {args.vllm.num_engines} for --rollout.batch_size {args.rollout.batch_size}: "
                "every engine serves whole prompts, so give at most one engine per prompt of a step"
            )
        ranks = args.actor.num_nodes * args.actor.num_gpus_per_node
        if ours and args.train.colocate_all and (args.vllm.num_engines or 1) > ranks:
            raise ValueError(
                f"--vllm.num_engines {args.vllm.num_engines} with --train.colocate_all: each engine shares one actor "
                f"rank's GPU; give at most {ranks} engines (the actor's ranks)"
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
        elif _model_type(model_dir) == "janus":
            check_janus(args, cfg, ours)
        elif not model_dir.is_dir():
            raise ModelError(f"--actor.model_name_or_path {model_dir}: no such model directory")
    except (ValueError, PromptError, ModelError) as e:  # one line, not argparse's 180-line usage first
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    register_estimators(cfg)


def _model_type(model_dir: Path) -> str | None:
    import json

    try:
        return json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_janus(args, cfg: PluginConfig, ours: bool) -> None:
    """A Janus actor: GvU, SRUM online or R3 on the UMM engine, GenEval-format prompt files (any classes), and LoRA
    kept to the language model. `--ds.lora.target_modules` names (q_proj, ..., or all-linear) are expanded to the
    language model's linear layers of those names, so that the SigLIP encoder's q/k/v projections, which share the
    names, and the image-generation modules stay frozen."""
    from transformers import AutoConfig, JanusForConditionalGeneration

    from umm_plugin.worlds.geneval import load_geneval

    if not ours:
        raise ValueError(
            f"{args.actor.model_name_or_path} is a Janus model: vLLM does not serve its image generation; pass "
            "--rollout.engine umm_plugin.openrlhf.engine:create_engines"
        )
    if cfg.umm.head.rl:
        raise ValueError("--umm.head.rl trains a diffusion head; Janus decodes with its VQ decoder and has none")
    if args.algo.advantage.estimator not in ("gvu_grpo", "srum_dense", "r3_stage"):
        raise ValueError(
            f"--algo.advantage.estimator {args.algo.advantage.estimator}: on a Janus model GvU (gvu_grpo), SRUM "
            "online (srum_dense) and R3 (r3_stage) run"
        )
    if args.algo.advantage.estimator == "r3_stage" and cfg.r3.judge == "evaluator":
        raise ValueError("--r3.judge evaluator is ShapesWorld's exact checker; on a Janus model use self or openai")
    if args.algo.advantage.estimator == "srum_dense" and cfg.srum.scorer != "prob":
        raise ValueError(f"--srum.scorer {cfg.srum.scorer}: SRUM on a Janus model asks yes/no questions; use prob")
    for path in (args.data.prompt_dataset, args.eval.dataset):
        if path:  # GenEval JSONL with any classes; errors name file:line:field
            load_geneval(path)
    config = AutoConfig.from_pretrained(args.actor.model_name_or_path)
    images = 2 if args.algo.advantage.estimator == "r3_stage" else 1  # R3's stage 2 draws a second picture
    if args.data.max_len < images * config.vq_config.num_patches**2:
        raise ValueError(
            f"--data.max_len {args.data.max_len}: a rollout on this model holds {images} image(s) of "
            f"{config.vq_config.num_patches**2} tokens, plus its text; raise it (in a recipe: -- --data.max_len N)"
        )
    if args.ds.lora.rank > 0:
        targets = args.ds.lora.target_modules or []
        wanted = {targets} if isinstance(targets, str) else set(targets)  # OpenRLHF's default: "all-linear"
        with torch.device("meta"):  # module names only: nothing is allocated
            model = JanusForConditionalGeneration(config)
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        args.ds.lora.target_modules = [
            n
            for n in linear
            if n.startswith("model.language_model.") and ("all-linear" in wanted or n.rsplit(".", 1)[-1] in wanted)
        ]
        if not args.ds.lora.target_modules:
            raise ValueError(
                f"--ds.lora.target_modules {' '.join(sorted(wanted))}: no such linear layer in the Janus language "
                "model (its layers: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)"
            )


def register(parser=None):
    if parser is not None:  # the driver, before parsing: the estimator names must be valid choices already
        add_flags(parser)
        register_estimators(PluginConfig())  # bound to the parsed config by `check`
        return lambda args: check(parser, args)
    cfg = plugin_config()
    register_estimators(cfg)
    # OpenRLHF loads a Janus directory (a VLM config) with AutoModelForImageTextToText: map it to the RL view.
    # `register` ignores native configs such as JanusConfig, so the mapping's override table is written directly.
    from transformers import AutoModelForImageTextToText, JanusConfig

    from umm_plugin.models.janus import janus_for_rl_class

    AutoModelForImageTextToText._model_mapping._extra_content[JanusConfig] = janus_for_rl_class()
    if cfg.umm.threads:  # Ray pins workers to one thread unless told otherwise
        torch.set_num_threads(cfg.umm.threads)
    if cfg.umm.head.rl:
        from openrlhf.trainer.ray.ppo_actor import register_actor_extension

        from umm_plugin.openrlhf.head_policy import NAME, HeadPolicy

        register_actor_extension(NAME, HeadPolicy)
    return None
