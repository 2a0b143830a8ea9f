"""R3's settings: `--r3.*` flags of `train_ppo_ray` (the R3 executor, the `r3_stage` estimator, the engine's
round-wise evaluation).

Differences from the authors' code, each a switch: the judge may be the policy itself (`self`, what makes R3
self-rewarding) or ShapesWorld's exact checker (`evaluator`) instead of an external VLM (`openai`); V may be the
checklist's share (`score checklist`, or in stage 1 only: `score staged`) instead of the authors' 0/1 verdict; a
stop on an imperfect root may cost C = -stop_penalty instead of the authors' 0 (`stop_penalty`); the buffer may draw
imperfect roots by their group's reward spread (`weighting spread`); advantages may be divided by the group's std as
in GRPO (`std_norm`). As in the authors' code, stage 2 draws from the last stage-1 step's results only. Unlike it, a
member that stops keeps V_prev instead of a second verdict on the same image (the judges here are deterministic), and
a judge that fails is an error, not V = 0. The diffusion head is trained beside the backbone with `--umm.head_rl`
(`head_policy.py`; recipes/r3.sh turns it on); in this X-Omni layout the AR tokens fix the picture and the head only
renders them, so on ShapesWorld it can add noise but not fix a layout.
"""

from dataclasses import dataclass, field

JUDGES = ("self", "evaluator", "openai")


@dataclass
class R3Config:
    judge: str = field(
        default="self",
        metadata={
            "help": "Who scores V in [0, 1]: self (the model's own caption and yes/no against a checklist of the "
            "prompt), evaluator (ShapesWorld's exact checker), openai (an OpenAI-compatible VLM at --r3.url)."
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
            "passes 0.5 with --r3.stop_penalty 1)."
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
    url: str = field(default="", metadata={"help": "openai judge: base URL, e.g. http://127.0.0.1:8000/v1."})
    model: str = field(default="", metadata={"help": "openai judge: the model name the server expects."})
    timeout: float = field(default=60.0, metadata={"help": "openai judge: seconds per request."})
    retries: int = field(default=2, metadata={"help": "openai judge: retries on connection errors and HTTP 5xx."})

    def __post_init__(self):
        if self.judge not in JUDGES:
            raise ValueError(f"--r3.judge {self.judge!r}: use one of {', '.join(JUDGES)}")
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
        if self.judge == "openai" and not (self.url and self.model):
            raise ValueError("--r3.judge openai needs --r3.url (an OpenAI-compatible server) and --r3.model")
