"""SRUM, the authors' way: an offline reward-weighted fine-tune, run on OpenRLHF's DeepSpeed strategy.

`umm-plugin srum --model DIR --out DIR`: the model generates images for training prompts, judges them itself
(`rewards/srum.py`: boxes, local and global scores, reward maps; PNG overlays written next to the run), and is then
fine-tuned on them for a few epochs with L = mean[M · ‖v̂ − (ε − x)‖²] + λ · mean‖v̂ − (ε − x_ref)‖² on the
diffusion head and, because in the X-Omni layout the AR image tokens decide what is drawn where (the head only
renders them), the same map pooled to the token grid weighting the image tokens' NLL (`--train both`, our default;
`--train head` is the paper's choice of what to train, and cannot change a layout here). Each trained part gets its
own DeepSpeed engine and optimizer through `DeepspeedStrategy.prepare`, so `torchrun --nproc_per_node N -m
umm_plugin.cli srum ...` shards the prompts over ranks like `train_sft` does; run alone it sets up a one-process
gloo group itself. Held-out accuracy is evaluated before training and after every epoch into curve.csv/png and
grids, as the online recipes do; the result is saved atomically as a complete model directory. The judged samples
and every epoch are checkpointed in `--out`/ckpt (the samples and random generators per rank, plus a DeepSpeed
checkpoint per trained part); `--resume true` continues a killed run to the same weights as an uninterrupted one.

A Janus directory (any model of the interface) trains the same way on a GenEval-format `--prompts` file, judged by
`rewards/srum.py`'s `geneval_self_judge`: it has no diffusion head (its VQ decoder is not trained), so its offline
update is the map-weighted NLL of its image tokens alone (`srum_token_loss`, "map-weighted token NLL"), and its
evaluation is its own GvU reward and yes/no checks on the first `--eval-n` training lines.
"""

import dataclasses
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from umm_plugin.models.generation import SamplingConfig
from umm_plugin.openrlhf.config import SRUMConfig

TRAINED = ("both", "head", "backbone")


@dataclass
class SRUMOfflineConfig(SRUMConfig):
    """SRUM offline, the authors' method: the options of `umm-plugin srum` (SRUMConfig's judge and map settings,
    then the model, data and fine-tune below)."""

    model: str = field(default="", metadata={"help": "Model directory to start from (required)."})
    out: str = field(default="", metadata={"help": "Where the fine-tuned model, curves, grids and maps go."})
    prompts: str = field(default="", metadata={"help": "GenEval JSONL of training prompts ('' = ShapesWorld train)."})
    n_prompts: int = field(default=512, metadata={"help": "Training prompts when --prompts is not given."})
    samples: int = field(default=4, metadata={"help": "Images generated per prompt."})
    train: str = field(default="both", metadata={"help": "What to fine-tune: both, head (the paper), backbone."})
    epochs: int = field(default=2, metadata={"help": "Passes over the generated data."})
    lr: float = field(default=2e-5, metadata={"help": "Learning rate of every trained part (authors: 2e-5)."})
    batch_size: int = field(default=64, metadata={"help": "Samples per optimizer step (all ranks)."})
    micro_batch_size: int = field(default=16, metadata={"help": "Samples per forward pass and rank."})
    eval_n: int = field(default=200, metadata={"help": "Held-out prompts per evaluation (0 = none)."})
    zero_stage: int = field(default=2, metadata={"help": "DeepSpeed ZeRO stage."})
    seed: int = field(default=0, metadata={"help": "Seeds prompts, sampling, noise and the data order."})
    resume: bool = field(
        default=False,
        metadata={"help": "Continue the run in --out from its last checkpoint (the judged samples, each epoch)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Delete the earlier run in --out and start again."})

    def __post_init__(self):
        super().__post_init__()
        if not self.model or not self.out:
            raise ValueError("srum needs --model (a model directory) and --out")
        if self.resume and self.overwrite:
            raise ValueError("srum: give --resume true (continue the run in --out) or --overwrite true, not both")
        if self.train not in TRAINED:
            raise ValueError(f"srum train {self.train!r}: use one of {', '.join(TRAINED)}")
        for name in ("n_prompts", "samples", "epochs", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"srum {name} {getattr(self, name)} must be at least 1")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"srum batch_size {self.batch_size} must be a multiple of micro_batch_size")
        if self.lr <= 0:
            raise ValueError(f"srum lr {self.lr} must be > 0")


@torch.no_grad()
def self_rewarded_samples(model, metas: list[dict], cfg: SRUMConfig, sampling, gen: torch.Generator) -> dict:
    """The model's own images for the lines `metas` and its reward maps for them: codes, images, maps, global scores.
    A ShapesWorld model judges with `self_judge`; another model of the interface with `geneval_self_judge`."""
    from umm_plugin.eval import generate_images
    from umm_plugin.models.umm import UMM
    from umm_plugin.rewards.srum import components_proposer, geneval_self_judge, reward_map, self_judge

    prompts = [m["prompt"] for m in metas]
    seed = int(torch.randint(1 << 30, (1,), generator=gen))
    proposer = None  # the connected-components proposer
    if cfg.sam:
        from umm_plugin.rewards.sam import SamProposer

        proposer = SamProposer.from_pretrained(cfg.sam, k=cfg.k)
    if isinstance(model, UMM):
        codes, images = generate_images(model, prompts, sampling, seed=seed)
        boxes, local, g, found, claimed = self_judge(
            model, images, prompts, cfg.k, cfg.scorer, proposer, assign=cfg.assign, relation=cfg.relation
        )
    else:
        draw = torch.Generator().manual_seed(seed)
        codes = torch.cat(
            [model.sample_image_tokens(prompts[i : i + 8], sampling, draw) for i in range(0, len(prompts), 8)]
        )
        images = model.decode(codes)
        proposer = proposer or (lambda image: components_proposer(image, cfg.k))
        boxes, local, g, found, claimed = geneval_self_judge(
            model, images, metas, proposer, cfg.k, cfg.assign, cfg.relation
        )
    bg = (found if cfg.missing else 1) * (claimed if cfg.extra else 1) * torch.ones_like(found)
    size = images.shape[1]
    maps = torch.stack(
        [reward_map(b, s, gi, size, cfg.local_min, f) for b, s, gi, f in zip(boxes, local, g.tolist(), bg.tolist())]
    )
    return {"prompts": prompts, "codes": codes, "images": images, "maps": maps, "global": g, "boxes": boxes}


def _single_process_group() -> None:
    """Launched without torchrun/deepspeed: a one-rank group on loopback, the way those launchers would set it."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _strategy(cfg: SRUMOfflineConfig):
    """OpenRLHF's DeepspeedStrategy with the arguments its CLIs would parse (CPU unless CUDA is there)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from openrlhf.utils.deepspeed import DeepspeedStrategy

    ds = SimpleNamespace(
        param_dtype="bf16" if torch.cuda.is_available() else "fp32",
        adam_offload=False,
        zpg=1,
        use_universal_ckpt=False,
        grad_accum_dtype=None,
        overlap_comm=False,
        deepcompile=False,
        tensor_parallel_size=1,
        ring_attn_size=1,
    )
    args = SimpleNamespace(ds=ds, train=SimpleNamespace(dynamic_batch_enable=False), local_rank=-1)
    return DeepspeedStrategy(
        seed=cfg.seed, max_norm=1.0, micro_train_batch_size=cfg.micro_batch_size, train_batch_size=cfg.batch_size,
        zero_stage=cfg.zero_stage, args=args,
    )  # fmt: skip


def _optim(cfg: SRUMOfflineConfig, steps: int) -> dict:
    return {
        "optim": "adam",
        "adam": {"lr": cfg.lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
        "lr_scheduler": "constant_with_warmup",
        "lr_warmup_ratio": 0.0,
        "max_norm": 1.0,
        "scheduler_steps": steps,
    }


def _evaluate(model, cfg: SRUMOfflineConfig, sampling, out: Path, step: int, extra: dict) -> dict:
    """ShapesWorld: held-out accuracy (exact evaluator); another model: its own GvU reward and yes/no checks on the
    first --eval-n training lines (`eval.evaluate_geneval`)."""
    from umm_plugin.eval import evaluate_geneval, save_grid, shapes_rollout_stats
    from umm_plugin.models.umm import UMM
    from umm_plugin.openrlhf.curves import append_curve
    from umm_plugin.worlds.geneval import load_geneval

    if isinstance(model, UMM):
        stats, images = shapes_rollout_stats(model, cfg.eval_n, True, sampling=sampling)
        caption = f"epoch {step}: held-out accuracy {stats['accuracy']:.3f}"
    else:
        report, images = evaluate_geneval(model, load_geneval(cfg.prompts)[: cfg.eval_n], sampling, seed=0)
        stats = {k: report["by_tag"]["overall"][k] for k in ("gvu_reward", "yes_no_pass")}
        caption = f"epoch {step}: self-judged GvU reward {stats['gvu_reward']:.3f}, yes/no {stats['yes_no_pass']:.3f}"
    save_grid(images[:16], caption, out / f"grid_{step:05d}.png")
    row = {"step": step, **stats, **extra}
    append_curve(out, row)
    return row


def train_offline(cfg: SRUMOfflineConfig, sampling=SamplingConfig(), log=print):
    """Generate (with `sampling`), self-judge, fine-tune; returns the final evaluation row (or {} with eval_n 0)."""
    import torch.distributed as dist

    from umm_plugin.algos.srum import pool_to_grid, srum_flow_loss, srum_token_loss
    from umm_plugin.eval import save_grid
    from umm_plugin.models.diffusion_head import to_pixels
    from umm_plugin.models.generation import continuation_logprobs
    from umm_plugin.models.interface import load_model
    from umm_plugin.models.umm import MARKER, UMM, claim_dir, save_atomically, torch_save_atomically
    from umm_plugin.openrlhf.curves import truncate_curve
    from umm_plugin.rewards.srum import overlay
    from umm_plugin.worlds.geneval import load_geneval
    from umm_plugin.worlds.grammar import load_prompts, make_prompts

    t0 = time.time()
    out = Path(cfg.out)
    claim_dir(out)  # before any work: never into a directory of someone else's files
    if cfg.resume and not (out / "ckpt" / "samples_rank0.pt").is_file():
        raise ValueError(f"srum: nothing to resume in {out}: it holds no checkpoint yet; start again with --overwrite")
    if not (cfg.resume or cfg.overwrite) and any(p.name != MARKER for p in out.iterdir()):
        raise ValueError(
            f"srum: output directory {out} holds an earlier run: --resume true continues it from its last checkpoint, "
            "--overwrite true deletes it and starts again"
        )
    model = load_model(cfg.model)
    shapes = isinstance(model, UMM)
    if not shapes and (not cfg.prompts or cfg.train == "head"):
        raise ValueError(
            f"srum: {cfg.model} is not a ShapesWorld model: give --prompts (GenEval JSONL) and train its image "
            "tokens (--train backbone or both; it has no diffusion head)"
        )
    if shapes:
        metas = load_prompts(cfg.prompts) if cfg.prompts else make_prompts(cfg.n_prompts, "train", cfg.seed)
    else:
        metas = load_geneval(cfg.prompts)
    _single_process_group()
    strategy = _strategy(cfg)
    strategy.setup_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    if cfg.overwrite and rank == 0:  # the directory is the plugin's (claimed above): empty it but for the marker
        for p in out.iterdir():
            if p.name != MARKER:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    dist.barrier()
    ckpt = out / "ckpt"
    ckpt.mkdir(exist_ok=True)
    if rank == 0:
        (out / "srum_config.json").write_text(str(dataclasses.asdict(cfg) | dataclasses.asdict(sampling)))
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    metas = [m for m in metas[rank::world] for _ in range(cfg.samples)]
    prompts = [m["prompt"] for m in metas]

    # A resumed run loads what this rank had after judging its samples, or after its last finished epoch.
    state_file = ckpt / f"epoch_rank{rank}.pt"
    saved = state_file if cfg.resume and state_file.is_file() else ckpt / f"samples_rank{rank}.pt"
    if cfg.resume:
        state = torch.load(saved, weights_only=False)  # the plugin's own file (pickle): resume only your own runs
        data, rows, start = state["data"], state["rows"], state["epoch"]
        gen.set_state(state["generator"])
        truncate_curve(out, start)
    else:
        rows = [_evaluate(model, cfg, sampling, out, 0, {"seconds": 0.0})] if cfg.eval_n and rank == 0 else []
        data, start = self_rewarded_samples(model, metas, cfg, sampling, gen), 0
        torch_save_atomically({"data": data, "rows": rows, "epoch": 0, "generator": gen.get_state()}, saved)
    n = len(prompts)
    if rank == 0 and not cfg.resume:
        show = [overlay(i, m) for i, m in zip(data["images"][:16], data["maps"][:16])]
        save_grid(np.stack(show), "reward maps (green 1, red 0) of the first samples", out / "maps.png")
    done = f"resumed after epoch {start} with {n} self-judged samples" if cfg.resume else f"{n} self-judged samples"
    log(
        f"rank {rank}: {done} in {time.time() - t0:.0f}s, mean global score {data['global'].mean():.3f}, mean map "
        f"{data['maps'].mean():.3f}"
    )

    micro = cfg.micro_batch_size
    steps_per_epoch = n // (cfg.batch_size // world)
    parts = {"backbone": model.backbone, "head": model.head} if shapes else {"backbone": model.backbone}
    trained = list(parts) if cfg.train == "both" else [cfg.train]
    engines = {}
    for name in trained:
        parts[name].train()
        engines[name], _, _ = strategy.prepare((parts[name], _optim(cfg, max(1, steps_per_epoch * cfg.epochs))))
        if start:  # weights, optimizer and schedule as they were after epoch `start`
            strategy.load_ckpt(engines[name], str(ckpt / name), tag=f"epoch{start}")
    x = to_pixels(data["images"])
    if shapes:
        lay = model.layout
        token_w = torch.tensor([lay.spread(w) for w in pool_to_grid(data["maps"], lay.grid).tolist()])  # 0 at <EOL>
        prefixes = [model.generation_prompt(p) for p in prompts]
    else:  # the map pooled onto the model's square token grid, one weight per image token (Janus-Pro: 24 x 24)
        token_w = pool_to_grid(data["maps"], int(model.image_tokens**0.5))
    for epoch in range(start + 1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen)[: steps_per_epoch * (cfg.batch_size // world)]
        losses = {name: [] for name in trained}
        for i in range(0, len(order), micro):
            idx = order[i : i + micro]
            if "backbone" in engines:
                bb = engines["backbone"]
                if shapes:
                    logp, mask = continuation_logprobs(
                        bb.module, [prefixes[j] for j in idx], [lay.tokens(data["codes"][j]) for j in idx]
                    )
                else:  # the image tokens' log-probs as sampled (T 1, no CFG), through the engine's weights
                    logp = model.image_logprobs([prompts[j] for j in idx], data["codes"][idx], SamplingConfig())
                    mask = torch.ones_like(logp)
                loss = srum_token_loss(logp, mask.float(), token_w[idx], cfg.lam)
                bb.backward(loss)
                bb.step()
                losses["backbone"].append(loss.item())
            if "head" in engines:
                hd = engines["head"]
                x0 = x[idx]
                noise = torch.randn(x0.shape, generator=gen)
                sigma = torch.sigmoid(torch.randn(len(x0), generator=gen))[:, None, None, None]  # logit-normal t
                v = hd((1 - sigma) * x0 + sigma * noise, sigma.flatten(), data["codes"][idx])
                loss = srum_flow_loss(v, noise, x0, data["maps"][idx][:, None], cfg.lam)
                hd.backward(loss)
                hd.step()
                losses["head"].append(loss.item())
        for name in trained:
            parts[name] = engines[name].module.eval()
        model.backbone = parts["backbone"]
        if shapes:
            model.head = parts["head"]
        extra = {f"loss_{k}": float(np.mean(v)) for k, v in losses.items()}
        extra["seconds"] = round(time.time() - t0, 1)
        log(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        if cfg.eval_n and rank == 0:
            rows.append(_evaluate(model, cfg, sampling, out, epoch, extra))
            shown = ("accuracy", "gvu_reward", "yes_no_pass")
            log(f"epoch {epoch}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in shown if k in rows[-1]))
        for name in trained:  # the epoch's checkpoint: each part's DeepSpeed checkpoint (the last two kept), then the
            strategy.save_ckpt(engines[name], str(ckpt / name), tag=f"epoch{epoch}", max_num=2)  # state naming it
            parts[name].train()
        torch_save_atomically({"data": data, "rows": rows, "epoch": epoch, "generator": gen.get_state()}, state_file)
    if rank == 0:
        for name in trained:
            parts[name].eval()
        final = save_atomically(model, out / "model")  # never a half-written model, never none
        log(f"saved {final} ({time.time() - t0:.0f}s)")
    dist.barrier()
    return rows[-1] if rows else {}
