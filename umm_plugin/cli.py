"""The `umm-plugin` command: ShapesWorld pretraining and checks, sampling, evaluation.

Errors a user can fix (a bad prompt, a missing or corrupt model directory, a bad flag value) print one line naming
the problem and exit 2; they never surface as a stack trace from inside torch.
"""

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import warnings


def _dataclass_args(parser, cls):
    for f in dataclasses.fields(cls):
        kw = {"help": f.metadata.get("help", "")}
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default
        kind = type(f.default) if "default" in kw else str
        if kind is bool:
            from umm_plugin.openrlhf.config import true_or_false as kind
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, **kw)


def _dataclass_value(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line naming the option, without the usage dump (`--help` shows it)."""
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _at_least(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value

    return parse


def _tags(text: str) -> tuple[str, ...]:
    from umm_plugin.worlds.grammar import TAGS

    tags = tuple(text.split(","))
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown categories {', '.join(unknown)}; use any of {', '.join(TAGS)}")
    return tags


def build_parser():
    from umm_plugin.models.generation import SamplingConfig
    from umm_plugin.models.pretrain import PretrainConfig
    from umm_plugin.openrlhf.srum import SRUMOfflineConfig
    from umm_plugin.worlds.grammar import TAGS

    p = _Parser(prog="umm-plugin", description="Self-rewarding RL for unified multimodal models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    shapes = sub.add_parser("shapes", help="The embedded ShapesWorld.").add_subparsers(
        dest="shapes_cmd", required=True
    )
    pre = shapes.add_parser("pretrain", help="Train a tiny UMM on ShapesWorld on CPU.")
    _dataclass_args(pre, PretrainConfig)
    chk = shapes.add_parser("check", help="Evaluator and tokenizer (and diffusion-head) fidelity, as JSON.")
    chk.add_argument("--n", type=_at_least(1), default=1000, help="Scenes to check.")
    chk.add_argument("--seed", type=int, default=0)
    chk.add_argument("--model", help="Also check this model's visual tokenizer and diffusion head.")

    prm = shapes.add_parser("prompts", help="Write a GenEval-format JSONL prompt file (train or held-out split).")
    prm.add_argument("--split", choices=("train", "eval"), default="train")
    prm.add_argument("--n", type=_at_least(1), default=1000, help="Prompts, cycling through the categories.")
    prm.add_argument("--seed", type=int, default=0)
    prm.add_argument("--tags", type=_tags, default=TAGS, help="Comma-separated categories to cycle through (all).")
    prm.add_argument(
        "--paired-relations",
        action="store_true",
        help="Relation prompts only for layouts whose mirror is in the split too (see grammar.prompt_pool).",
    )
    prm.add_argument("--out", required=True)

    gen = sub.add_parser("generate", help="Sample images for a prompt into a PNG grid.")
    gen.add_argument("--model", required=True, help="Model directory.")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--n", type=_at_least(1), default=4, help="Images to sample.")
    gen.add_argument("--out", default="grid.png")
    gen.add_argument("--seed", type=int, default=0)
    _dataclass_args(gen, SamplingConfig)

    ev = sub.add_parser("eval", help="GenEval-style generation / understanding table on held-out prompts.")
    ev.add_argument("--model", required=True, help="Model directory (a ShapesWorld UMM or a Janus checkpoint).")
    ev.add_argument(
        "--prompts",
        help="GenEval-format JSONL (any classes): one image per prompt, judged by the model itself (real models).",
    )
    ev.add_argument("--grid", default="eval_grid.png", help="With --prompts: a PNG of the first 16 images.")
    ev.add_argument(
        "--n",
        type=_at_least(1),
        default=400,
        help="Held-out prompts (cycling through the categories); with --prompts the first n.",
    )
    ev.add_argument("--seed", type=int, default=0)
    _dataclass_args(ev, SamplingConfig)
    ev.add_argument(
        "--rounds",
        type=_at_least(0),
        default=0,
        help="Also run R3 at inference: plan + image, then up to this many reflect-refine rounds (0 = skip).",
    )
    ev.add_argument("--rounds-grid", help="With --rounds: a PNG of the first prompts' plans, images, reflections.")
    ev.add_argument("--json", help="Also write the report here.")
    ev.add_argument(
        "--device", default="cpu", help="Where a real model runs (cuda: a GPU, in bfloat16); ShapesWorld: cpu only."
    )

    srum = sub.add_parser("srum", help="SRUM offline: self-judged reward maps, then a reward-weighted fine-tune.")
    _dataclass_args(srum, SRUMOfflineConfig)
    _dataclass_args(srum, SamplingConfig)

    janus = sub.add_parser("janus", help="Janus / Janus-Pro on transformers.").add_subparsers(
        dest="janus_cmd", required=True
    )
    tiny = janus.add_parser("tiny", help="Write a tiny random-init Janus in the public checkpoints' layout.")
    tiny.add_argument("--out", required=True, help="Directory to write.")
    tiny.add_argument("--seed", type=int, default=0)

    flg = sub.add_parser("flags", help="Write the reference of every flag and option (markdown).")
    flg.add_argument("--out", default="-", help="File to write ('-' = stdout).")

    pat = sub.add_parser("patch-openrlhf", help="Apply patches/ to the installed OpenRLHF (idempotent).")
    mode = pat.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="Only report; exit 1 unless every patch is applied.")
    mode.add_argument("--revert", action="store_true", help="Undo every applied patch.")
    return p


def shapes_check(n: int, seed: int, model_dir: str | None) -> dict:
    import numpy as np
    import torch

    from umm_plugin.models.diffusion_head import render_codes
    from umm_plugin.models.umm import UMM
    from umm_plugin.worlds.evaluator import accuracy_table, evaluate
    from umm_plugin.worlds.grammar import make_prompts, sample_scene
    from umm_plugin.worlds.scene import render

    rng = np.random.default_rng(seed)
    metas = make_prompts(n, "eval", seed)
    images = np.stack([render(sample_scene(m, rng)) for m in metas])
    verdicts = [evaluate(img, m)[0] for img, m in zip(images, metas)]
    report = {"n": n, "evaluator_on_ground_truth": accuracy_table([m["tag"] for m in metas], verdicts)}
    if model_dir:
        model = UMM.from_pretrained(model_dir)
        codes = model.vq.encode(images)
        same = [evaluate(img, m)[0] == v for img, m, v in zip(model.vq.decode(codes), metas, verdicts)]
        report["tokenizer_round_trip"] = float(np.mean(same))
        gen = torch.Generator().manual_seed(seed)
        heads = np.concatenate(
            [render_codes(model.head, model.scheduler, codes[i : i + 100], 4, gen) for i in range(0, n, 100)]
        )
        report["diffusion_head_round_trip"] = float(
            np.mean([evaluate(img, m)[0] == v for img, m, v in zip(heads, metas, verdicts)])
        )
    return report


def run(args) -> None:
    from umm_plugin.models.generation import SamplingConfig
    from umm_plugin.models.pretrain import PretrainConfig, pretrain
    from umm_plugin.models.umm import UMM
    from umm_plugin.worlds.grammar import parse_prompt

    if args.cmd == "shapes" and args.shapes_cmd == "pretrain":
        pretrain(_dataclass_value(PretrainConfig, args))
    elif args.cmd == "shapes" and args.shapes_cmd == "check":
        print(json.dumps(shapes_check(args.n, args.seed, args.model)))
    elif args.cmd == "shapes" and args.shapes_cmd == "prompts":
        from umm_plugin.worlds.grammar import make_prompts, save_prompts

        save_prompts(args.out, make_prompts(args.n, args.split, args.seed, args.tags, args.paired_relations))
        print(f"wrote {args.out} ({args.n} {args.split} prompts)")
    elif args.cmd == "generate":
        from umm_plugin.eval import generate_images, save_grid

        sampling = _dataclass_value(SamplingConfig, args)
        parse_prompt(args.prompt)  # ShapesWorld prompts: a clear error before any model work
        model = UMM.from_pretrained(args.model)
        _, images = generate_images(model, [args.prompt] * args.n, sampling, args.seed)
        save_grid(images, args.prompt, args.out)
        print(f"wrote {args.out} ({args.n} images)")
    elif args.cmd == "srum":
        from umm_plugin.openrlhf.srum import SRUMOfflineConfig, train_offline

        train_offline(_dataclass_value(SRUMOfflineConfig, args), _dataclass_value(SamplingConfig, args))
    elif args.cmd == "janus" and args.janus_cmd == "tiny":
        from umm_plugin.models.janus import build_tiny_janus
        from umm_plugin.models.umm import claim_dir

        janus = build_tiny_janus(claim_dir(args.out), args.seed)
        n = sum(p.numel() for p in janus.model.parameters())
        print(f"wrote {args.out} (tiny Janus: {n} parameters, {janus.image_tokens} image tokens)")
    elif args.cmd == "flags":
        from umm_plugin.flags import reference

        text = reference()
        if args.out == "-":
            print(text, end="")
        else:
            with open(args.out, "w") as f:
                f.write(text)
    elif args.cmd == "patch-openrlhf":
        from umm_plugin.openrlhf import patching

        root, files = patching.site_root(), patching.patch_files()
        if args.check:
            k = patching.applied_count(root, files)
            print(json.dumps({"openrlhf": str(root / "openrlhf"), "applied": [p.name for p in files[:k]]}))
            sys.exit(0 if k == len(files) else 1)
        done = patching.revert(root, files) if args.revert else patching.apply(root, files)
        print(f"{'reverted' if args.revert else 'applied'} {len(done)} of {len(files)} patches in {root / 'openrlhf'}")
    elif args.cmd == "eval":
        from umm_plugin.eval import evaluate_model, format_report
        from umm_plugin.models.interface import load_model

        if args.prompts:  # a structural check of the file before any model is loaded
            from umm_plugin.worlds.geneval import load_geneval

            metas = load_geneval(args.prompts)[: args.n]
        import torch

        model = load_model(args.model, args.device, None if args.device == "cpu" else torch.bfloat16)
        t0 = time.time()
        sampling = _dataclass_value(SamplingConfig, args)
        if args.prompts or not isinstance(model, UMM):
            from umm_plugin.eval import evaluate_geneval, format_geneval_report, save_grid

            if not args.prompts or isinstance(model, UMM):
                raise ValueError(
                    "--prompts FILE (GenEval JSONL) goes with a real model; ShapesWorld models are evaluated on their "
                    "own held-out split (leave out --prompts)"
                )
            if args.rounds:
                raise ValueError("--rounds (R3 at inference) runs on ShapesWorld models only so far; leave it out")
            report, images = evaluate_geneval(model, metas, sampling, args.seed)
            save_grid(images[:16], f"{args.model}: first {min(16, len(images))} prompts", args.grid)
            report["seconds"] = round(time.time() - t0, 1)
            print(format_geneval_report(report))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=1)
            return
        report = evaluate_model(model, args.n, args.seed, sampling)
        if args.rounds:
            from umm_plugin.eval import r3_rounds, save_rounds
            from umm_plugin.worlds.grammar import make_prompts

            metas = make_prompts(args.n, "eval", args.seed)
            r3 = r3_rounds(model, metas, args.rounds, sampling, args.seed)
            if args.rounds_grid:
                save_rounds(r3["record"], args.rounds_grid)
            report["r3"] = {k: v for k, v in r3.items() if k != "record"}
        report["seconds"] = round(time.time() - t0, 1)
        print(format_report(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)


def main(argv=None) -> None:
    # Import-time chatter of optional backends (bitsandbytes' CPU kernels, flash-attn's missing CUDA part) is not
    # the user's problem; our own errors stay one line on stderr.
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from umm_plugin.models.umm import ModelError
    from umm_plugin.openrlhf.patching import PatchError
    from umm_plugin.worlds.grammar import PromptError

    hf_logging.disable_progress_bar()
    try:
        run(args)
    except (PromptError, ModelError, PatchError, ValueError, FileNotFoundError) as e:
        print(f"umm-plugin: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
