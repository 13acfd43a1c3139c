"""
progrs.py: PROGRS (Process Rewards for Outcome-Guided Steps) in one file.

GRPO on math problems where a step-level process reward model (PRM) adds credit while the verified
final answer stays in charge. The key move is outcome-conditioned centering: inside each prompt's group
of rollouts, the process scores b of the *incorrect* rollouts are shifted to zero mean, so the PRM can
rank wrong answers against each other but can never lift wrong answers as a class above right ones.

    pip install -r requirements.txt && python progrs.py   # the tiny model in tiny_task/, CPU, offline
    python progrs.py --mode outcome                  # plain GRPO, for comparison
    python progrs.py --prm tiny_task/prm             # a learned quantile-regression PRM
    python progrs.py --model Qwen/Qwen2.5-0.5B       # on a GPU: CUDA + bf16, GSM8K, LLM-sized defaults
    python progrs.py --model Qwen/Qwen2.5-0.5B-Instruct --chat
    pytest test_progrs.py

Read it top to bottom: the PROGRS idea as pure functions first (centering, advantages, coherence, the
fluent-failure gauge), then the pipeline in the order data flows: flags -> data -> prompt -> verifier
-> steps -> toy PRM -> learned PRMs -> rollouts -> loss -> training loop -> main.

The paper's (arXiv 2604.02341; only its abstract is public): GRPO with verifiable outcome rewards and a
step-level PRM, the outcome kept in charge; outcome-conditioned centering of PRM scores among incorrect
rollouts within each group; a frozen quantile-regression PRM (per-step quantiles of success
probability); a multi-scale coherence score over windows of step scores, mu * exp(-lam_var * sigma / mu).
Our reading, where the abstract is silent (marked "our reading" where it is coded):
  - A = A_out + lam * c: GRPO's outcome advantage plus the centered bonus; right rollouts keep b.
  - The verified answer is the first committed answer line; decoding stops there.
  - Steps are the non-empty lines before it; windows slide over 2 and 4 judged steps; none gives b = 0.
  - The default PRM is a toy that checks each step's arithmetic; learned PRMs plug in behind the same
    interface. The toy PRM is read at its lowest quantile (tau = 0.1): a pessimistic PRM.
  - --mode progrs-strict: right rollouts' scores are centred among themselves too.
Left out: a value network; a reference-model KL by default (--kl-coef); more than one policy update per
batch by default (--ppo-epochs > 1 turns on the clipped ratio).
"""
import argparse, ast, collections, contextlib, copy, functools, hashlib, json, math, os, random, re, shutil
import sys, time
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.utils.checkpoint

# ----------------------------------------------------------------------------------------------------
# The PROGRS idea, as pure functions of (P, G) tensors: P prompts, G rollouts each (torch only)
#
# Each rollout has an outcome r in {0, 1} from the verifier and a process score b in [0, 1] from the
# PRM (its step scores combined by coherence_score, below). The advantage of rollout j of prompt i:
#     A_out_ij = (r_ij - mean_j r_i) / (std_j r_i + eps)    GRPO's outcome advantage (population std)
#     c_ij     = b_ij - mean{ b_ik : r_ik = 0 }   if r_ij = 0        the centered bonus
#     c_ij     = b_ij                             if r_ij = 1        (our reading: right ones keep b)
#     A_ij     = A_out_ij + lam * c_ij                               (our reading of the paper's Eq. 3)

def outcome_conditioned_centering(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Shift the process scores of each group's incorrect rollouts to zero mean.

    scores:  (P, G) float, one process score per rollout (P prompts, G rollouts each; any leading
             shape works, groups are along the last dim).
    correct: (P, G) bool (or 0/1), the verified outcome of each rollout.
    returns: (P, G) centered bonus, same dtype/device/shape:
        c_ij = s_ij - mean{ s_ik : k incorrect }   if rollout j is incorrect
        c_ij = s_ij                                 if rollout j is correct
    Rows with no incorrect rollout are unchanged; a single incorrect rollout gets 0; the sum is taken
    in at least float32, so half-precision scores do not overflow. Among incorrect rollouts the PRM's
    ranking survives, but their bonuses average to 0, so the PRM cannot lift wrong answers as a class.

    >>> s = torch.tensor([[0.9, 0.2, 0.6, 0.4]]); ok = torch.tensor([[True, False, False, False]])
    >>> outcome_conditioned_centering(s, ok)
    tensor([[ 0.9000, -0.2000,  0.2000,  0.0000]])
    """
    wrong = ~correct.bool()
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))  # fp16 sums overflow at 65504
    n_wrong = wrong.sum(-1, keepdim=True).clamp(min=1)                      # (P, 1); no 0/0
    wrong_mean = torch.where(wrong, x, 0.0).sum(-1, keepdim=True) / n_wrong  # (P, 1)
    return torch.where(wrong, x - wrong_mean, x).to(scores.dtype)           # (P, G)

ADV_EPS = 1e-6

def group_normalize(rewards: torch.Tensor, eps: float = ADV_EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) within each row: (P, G) -> (P, G). Uniform rows give 0."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)

def compute_advantages(correct: torch.Tensor, b: torch.Tensor, mode: str, lam: float):
    """(P, G) outcomes and process scores -> (advantages A, A_out, centered bonus c), each (P, G).

    progrs:        A = A_out + lam * c. A group whose rollouts share one outcome has A_out = 0 and
                   learns only from c: all wrong -> which wrong answers had better steps; all right
                   -> a push towards every rollout, more for sounder steps.
    outcome:       A = A_out, plain GRPO (b is computed and logged, not used).
    absolute:      the naive blend the paper warns against: reward r + lam * b, group-normalised, so
                   a wrong answer with fluent steps can out-score a right one.
    progrs-strict: a stricter reading (ours): right rollouts are centred among themselves too, so the
                   PRM only orders rollouts within each outcome class.

    A mixed group, an all-wrong group and an all-right group (G = 4, lam = 1):
    >>> ok = torch.tensor([[True, False, False, False], [False] * 4, [True] * 4])
    >>> b = torch.tensor([[0.6, 0.6, 0.2, 0.1], [0.6, 0.2, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])
    >>> adv, a_out, bonus = compute_advantages(ok, b, "progrs", lam=1.0)
    >>> print(a_out.numpy().round(2))       # GRPO: only the mixed group has an outcome signal
    [[ 1.73 -0.58 -0.58 -0.58]
     [ 0.    0.    0.    0.  ]
     [ 0.    0.    0.    0.  ]]
    >>> print(bonus.numpy().round(2))       # wrong rollouts centred among themselves; right ones keep b
    [[ 0.6  0.3 -0.1 -0.2]
     [ 0.3 -0.1 -0.1 -0.1]
     [ 0.6  0.6  0.3  0.3]]
    >>> print(adv.numpy().round(2))         # the fluent wrong rollout (-0.28) stays below the right one
    [[ 2.33 -0.28 -0.68 -0.78]
     [ 0.3  -0.1  -0.1  -0.1 ]
     [ 0.6   0.6   0.3   0.3 ]]
    """
    r = correct.float()
    a_out = group_normalize(r)
    bonus = outcome_conditioned_centering(b, correct)
    if mode == "progrs":
        adv = a_out + lam * bonus
    elif mode == "outcome":
        adv = a_out
    elif mode == "absolute":
        adv = group_normalize(r + lam * b)
    elif mode == "progrs-strict":
        # the same centering with the roles swapped centres the right rollouts among themselves
        bonus = torch.where(correct.bool(), outcome_conditioned_centering(b, ~correct.bool()), bonus)
        adv = a_out + lam * bonus
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return adv, a_out, bonus

# Dominance. In a mixed group with k of G right (p = k/G), A_out(right) - A_out(wrong) = 1/(std + eps)
# with std = sqrt(p(1-p)), while the bonuses differ by at most lam * (n_wrong - 1)/n_wrong (b in
# [0, 1]; a right bonus is >= 0, a centered wrong one < 1). So progrs keeps every right rollout above
# every wrong one in its group whenever lam < max_dominant_lam(G) (2.58 for G = 8; > 2 for any G).

def max_dominant_lam(group_size: int, eps: float = ADV_EPS) -> float:
    """The largest lam for which progrs keeps every right rollout above every wrong one (b in [0,1])."""
    bound = math.inf
    for k in range(1, group_size - 1):  # k right, n = G - k >= 2 wrong
        p, n = k / group_size, group_size - k
        bound = min(bound, (1 / (math.sqrt(p * (1 - p)) + eps)) / ((n - 1) / n))
    return bound

def dominance_violations(adv: torch.Tensor, correct: torch.Tensor) -> int:
    """Pairs (right i, wrong j) in the same group with A_j >= A_i."""
    ok = correct.bool()
    pair = ok.unsqueeze(-1) & ~ok.unsqueeze(-2)                              # (P, G_i, G_j)
    return int((pair & (adv.unsqueeze(-2) >= adv.unsqueeze(-1))).sum())

def control_bonus(b: torch.Tensor, control: str, rng: torch.Generator | None = None) -> torch.Tensor:
    """--bonus-control, for experiments: `shuffle` permutes b within each group (the same values, no
    link to the rollouts), `constant` gives every rollout the step's mean b (the offsets alone)."""
    if control == "shuffle":
        return b.gather(-1, torch.rand(b.shape, generator=rng).argsort(-1))   # a permutation per group
    if control == "constant":
        return torch.full_like(b, float(b.mean()))
    return b

# Coherence: the process score b of one rollout, from its step scores s_1..s_S (one PRM quantile per
# step). For each window size W: every run of W consecutive steps (sliding; our reading) gives
#     r_coh = mu * exp(-lam_var * sigma / mu)        (mu, sigma: mean and std in the window)
# and the scale's score is the mean over its windows; b is the mean over scales. Fewer steps than W:
# the whole sequence is one window. A steady run of good steps keeps b near mu; a run that swings
# between confident and doubtful steps is discounted. Scores are clipped to [0, 1], so b is in [0, 1];
# mu = 0 gives 0 (the limit); steps the PRM gives NaN (no opinion) are dropped first; no judged step
# gives b = 0 (no process evidence, no process credit; our reading).

def coherence_score(step_scores, windows=(2, 4), lam_var: float = 1.0) -> float:
    s = torch.as_tensor(step_scores, dtype=torch.float64).reshape(-1)                  # (S,)
    s = s[~torch.isnan(s)].clamp(0.0, 1.0)
    if s.numel() == 0:
        return 0.0
    per_scale = []
    for w in windows:
        win = s.unfold(0, min(w, s.numel()), 1)                                       # (S - W + 1, W)
        mu, sigma = win.mean(-1), win.std(-1, correction=0)
        r = torch.where(mu > 0, mu * torch.exp(-lam_var * sigma / mu.clamp(min=1e-12)), 0.0)
        per_scale.append(r.mean())
    return float(torch.stack(per_scale).mean())

# Fluent failures: the gauge to watch for PRM hacking. A rollout is a fluent failure when its answer
# is wrong although the PRM rates it like a right one: it has at least one judged step and its b
# reaches the median b of right rollouts (this batch's and the run's last FLUENT_POOL right training
# rollouts). A rank against the PRM's own scores, so it does not depend on the PRM's scale, and it
# stays defined in a step with no right rollout; it is None until a right rollout has been seen.

FLUENT_POOL = 256

def fluent_failures(b, correct, judged, right_b) -> torch.Tensor | None:
    """(N,) process scores, outcomes, has-a-judged-step, and the reference pool of right b's ->
    (N,) bool: wrong rollouts whose b reaches the pool's median (None for an empty pool).

    >>> fluent_failures(torch.tensor([0.9, 0.7, 0.5, 0.0]), torch.tensor([True, False, False, False]),
    ...                 torch.tensor([True, True, True, False]), [0.6, 0.7])
    tensor([False,  True, False, False])
    """
    pool = torch.tensor(list(right_b) + b[correct.bool()].tolist(), dtype=torch.float32)
    if pool.numel() == 0:
        return None
    return ~correct.bool() & judged.bool() & (b.float() >= pool.quantile(0.5))


# ----------------------------------------------------------------------------------------------------
# Flags: every knob and its default in one place. Size-dependent defaults are filled in once the
# model is loaded: the tiny CPU model on its own task, or an LLM (>= 50M parameters) on GSM8K.

HERE = Path(__file__).resolve().parent
TINY_TASK = HERE / "tiny_task"
TINY_MAX_PARAMS = 50_000_000
SIZE_DEFAULTS = {
    "tiny": dict(data=str(TINY_TASK / "train.jsonl"), eval_data=str(TINY_TASK / "test.jsonl"),
                 steps=60, prompts_per_step=16, max_new_tokens=64, lr=1e-4, micro_batch=128,
                 eval_every=20, eval_size=0, eval_batch=256),
    "llm": dict(data="gsm8k", eval_data="gsm8k", steps=200, prompts_per_step=16, max_new_tokens=512,
                lr=1e-6, micro_batch=8, eval_every=25, eval_size=500, eval_batch=64),
}

# (group, flag, type or choices, default, help, the check it must pass). A default of None is chosen
# from the model's size; --help shows both.
FLAGS = [
    ("model", "--model", str, str(TINY_TASK / "model"), "local folder or hub id", None),
    ("model", "--device", str, "auto", "auto | cpu | cuda | cuda:N", None),
    ("model", "--dtype", ["auto", "fp32", "bf16"], "auto", "bf16 autocasts over fp32 weights (auto: on cuda)", None),
    ("model", "--chat", bool, False, "wrap prompts in the tokenizer's chat template", None),
    ("data", "--data", str, None, "train prompts: a JSONL file or `gsm8k`", None),
    ("data", "--eval-data", str, None, "eval problems: a JSONL file or `gsm8k`", None),
    ("data", "--eval-size", int, None, "eval problems (0: all)", ">= 0"),
    ("data", "--eval-every", int, None, "steps between evals", ">= 1"),
    ("data", "--eval-samples", int, 0, "K > 0: also sampled pass@1, K samples per problem", ">= 0"),
    ("data", "--eval-batch", int, None, "rows per eval batch (problems x samples)", ">= 1"),
    ("rollouts", "--steps", int, None, "policy updates", ">= 1"),
    ("rollouts", "--prompts-per-step", int, None, "P: prompts per step", ">= 1"),
    ("rollouts", "--group-size", int, 8, "G: rollouts per prompt (GRPO needs a group to compare)", ">= 2"),
    ("rollouts", "--max-new-tokens", int, None, "completion length cap", ">= 1"),
    ("rollouts", "--temperature", float, 1.0, "sampling temperature", "> 0"),
    ("rewards", "--mode", ["progrs", "outcome", "absolute", "progrs-strict"], "progrs",
     "progrs: A_out + lam*c | outcome: plain GRPO | absolute: r + lam*b | progrs-strict", None),
    ("rewards", "--bonus-control", ["none", "shuffle", "constant"], "none",
     "experiment control: b shuffled within each group, or the step's mean b", None),
    ("rewards", "--lam", float, 1.0, "weight of the centered bonus c", ">= 0"),
    ("rewards", "--prm", str, "toy", "toy | a PRM folder | a hub id", None),
    ("rewards", "--prm-quantile", float, None, "the PRM's quantile to read (None: its config's, else lowest)", None),
    ("rewards", "--prm-tag", str, None, "causal-LM PRM: the step tag (None: its config's, else ки)", None),
    ("rewards", "--prm-tokens", str, None, "causal-LM PRM: good,bad tokens (None: its config's, else +,-)", None),
    ("rewards", "--lam-var", float, 1.0, "coherence volatility penalty", ">= 0"),
    ("optimisation", "--lr", float, None, "AdamW learning rate", "> 0"),
    ("optimisation", "--warmup-steps", int, 10, "linear learning-rate warmup", ">= 0"),
    ("optimisation", "--micro-batch", int, None, "sequences per forward/backward", ">= 1"),
    ("optimisation", "--ppo-epochs", int, 1, "updates per batch (> 1: clipped ratio)", ">= 1"),
    ("optimisation", "--kl-coef", float, 0.0, "k3 KL to the initial model (0: off)", ">= 0"),
    ("optimisation", "--max-grad-norm", float, 1.0, "gradient clipping", "> 0"),
    ("logging", "--out", str, "out", "metrics.jsonl, config.json and model/ go here", None),
    ("logging", "--save-every", int, None, "steps between checkpoints to OUT/model (None: --eval-every)", ">= 1"),
    ("logging", "--seed", int, 0, "same seed, same CPU: same numbers", None),
]

class ProgrsError(Exception):
    """Bad input from the user: main() prints the message as one line and exits non-zero."""

def first_line(e) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):  # a bad flag is one line on stderr (no usage block), exit status 2
        self.exit(2, f"progrs.py: error: {message}\n")

def build_parser() -> argparse.ArgumentParser:
    p, groups = OneLineErrorParser(description="PROGRS: GRPO with outcome-conditioned process rewards."), {}
    short = lambda v: str(v).replace(str(HERE) + os.sep, "")  # noqa: E731
    for group, flag, kind, default, help, _ in FLAGS:
        key = flag[2:].replace("-", "_")
        shown = (f"{short(SIZE_DEFAULTS['tiny'][key])} tiny / {short(SIZE_DEFAULTS['llm'][key])} LLM"
                 if key in SIZE_DEFAULTS["tiny"] else short(default))
        kw = dict(action="store_true") if kind is bool else dict(choices=kind) if isinstance(kind, list) \
            else dict(type=kind)
        g = groups.get(group) or groups.setdefault(group, p.add_argument_group(group))
        g.add_argument(flag, default=default, help=f"{help} (default: {shown})", **kw)
    return p

def check_args(args) -> None:
    """Stop early, with one line naming the flag, on values that would train silently wrong."""
    for _, flag, kind, _, _, rule in FLAGS:
        x = getattr(args, flag[2:].replace("-", "_"))
        if x is not None and kind is float and not math.isfinite(x):  # first: inf passes every range
            raise ProgrsError(f"{flag}: expected a finite number, got {x}")
        if x is not None and rule and not (x >= float(rule[3:]) if rule[1] == "=" else x > float(rule[2:])):
            raise ProgrsError(f"{flag}: expected a value {rule}, got {x}")
    if args.prm_tokens is not None and len(args.prm_tokens.split(",")) != 2:
        raise ProgrsError(f"--prm-tokens: expected two tokens, good,bad, got {args.prm_tokens}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ProgrsError(f"--out: expected a folder, got the file {args.out}")


# ----------------------------------------------------------------------------------------------------
# Data: a problem is {"question": str, "gold": str}. Files are JSONL with "question" and "answer": the
# bare final answer (tiny_task) or a GSM8K rationale whose last line is "#### N".

MAX_CHARS = 20_000  # per question or answer: GSM8K's longest is under 1,000

def parse_gold(answer: str) -> str:
    """The final answer of a record: the text after the last `####`, else the whole string."""
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()

def load_problems(path) -> list[dict]:
    """Read JSONL records with `question` and `answer` into [{"question", "gold"}]."""
    path, problems = Path(path), []
    if not path.is_file():
        raise ProgrsError(f"{path}: no such data file (expected JSONL with 'question' and 'answer')")
    try:  # split("\n"), not splitlines(): a JSON string may hold U+2028, which is no line end in JSONL
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ProgrsError(f"{path}: not UTF-8 text (byte {e.start}); expected JSONL") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProgrsError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one "
                              "{\"question\": ..., \"answer\": ...} object per line") from None
        q, a = (rec.get("question"), rec.get("answer")) if isinstance(rec, dict) else (None, None)
        if not isinstance(q, str) or isinstance(a, bool) or not isinstance(a, (str, int, float)) \
                or isinstance(a, float) and not math.isfinite(a):
            problem = "expected an object with a string 'question' and a string or number 'answer'"
        elif max(len(q), len(str(a))) > MAX_CHARS:
            problem = f"a question or answer of {max(len(q), len(str(a))):,} characters (at most {MAX_CHARS:,})"
        elif not q.strip() or not parse_gold(str(a)):
            problem = "empty 'question' or empty final answer"
        else:
            problems.append({"question": q.strip(), "gold": parse_gold(str(a))})
            continue
        raise ProgrsError(f"{path}:{lineno}: {problem}")
    if not problems:
        raise ProgrsError(f"{path}: no records (expected JSONL with 'question' and 'answer')")
    return problems

# GSM8K by name (--data gsm8k, --eval-data gsm8k): the train and test splits of the original public
# release (MIT licence), downloaded once into PROGRS_CACHE (default ~/.cache/progrs) and checked by line
# count and sha256. PROGRS_GSM8K_URL points at a mirror holding train.jsonl and test.jsonl.
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
GSM8K_SPLITS = {"train": (7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
                "test": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")}

def load_data(value: str, split: str, flag: str) -> list[dict]:
    """--data / --eval-data: a JSONL path, or `gsm8k` for that split of GSM8K."""
    import urllib.request

    if value != "gsm8k":
        return load_problems(value)
    path = Path(os.environ.get("PROGRS_CACHE") or Path.home() / ".cache" / "progrs") / f"gsm8k_{split}.jsonl"
    if not path.is_file():  # a cached file was checked before it was written
        url = f"{os.environ.get('PROGRS_GSM8K_URL', GSM8K_URL).rstrip('/')}/{split}.jsonl"
        hint = f"pass a local copy instead: {flag} path/to/gsm8k_{split}.jsonl"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
            raise ProgrsError(f"{flag} gsm8k: could not download {url} "
                              f"({first_line(getattr(e, 'reason', e))}); {hint}") from None
        (lines, sha), got = GSM8K_SPLITS[split], (data.count(b"\n"), hashlib.sha256(data).hexdigest())
        if got != (lines, sha):
            raise ProgrsError(f"{flag} gsm8k: {url} is not the pinned GSM8K {split} split ({got[0]} lines, "
                              f"sha256 {got[1][:12]}...; expected {lines}, {sha[:12]}...); {hint}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".part").write_bytes(data)
        path.with_suffix(".part").replace(path)  # atomic: never half a file in the cache
    return load_problems(path)


# ----------------------------------------------------------------------------------------------------
# Prompt: one format for RL rollouts, evaluation and the tiny model's supervised warm start
# (tiny_task/build_model.py imports it), so the model is never asked in a format it was not taught.

INSTRUCTION = "Solve the problem. Write one step per line, then a last line 'Answer: <answer>'."

def build_prompt(question: str, tokenizer=None, chat: bool = False) -> str:
    """Plain: INSTRUCTION / "Question: ..." / "Solution:". chat=True: the tokenizer's chat template."""
    if not chat:
        return f"{INSTRUCTION}\nQuestion: {question}\nSolution:\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ProgrsError("--chat: this tokenizer has no chat template (drop --chat for a base model)")
    messages = [{"role": "user", "content": f"{INSTRUCTION}\n{question}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------
# Verifier: exact match on the first committed answer
#
# A completion commits on its *answer line*: the first line that closes a \boxed{...} (braces matched:
# \boxed{\frac{1}{2}} is whole) or holds "Answer:" (any case; **Answer:** too) or "####", then text.
# Decoding stops at the end of that line, so what a base model writes after it (its next invented
# question and "Answer: 7") is never judged or trained. No answer line -> r = 0: no fallback to "the
# last number", which would reward answers the model never committed to. A numeric gold matches when
# the answer holds exactly one number equal to it by value ("$1,234.00 dollars" == 1234; "5 or 6" never
# matches); any other gold is compared as a string without `$`, `*` and a trailing period. Every
# function here is linear in the text.

_ANSWER_MARK = re.compile(r"answer[*\s]{0,8}:|####", re.IGNORECASE)
_BOX_EVENT = re.compile(r"\\boxed\s*\{|[{}]")
_NUMBER = re.compile(r"(?<![0-9.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
# the committed answer; where its line starts; just past it (and its newline); whether a newline ends it
AnswerLine = NamedTuple("AnswerLine", [("answer", str), ("start", int), ("end", int), ("ended", bool)])

def _closed_boxes(text: str) -> list[tuple[int, int]]:
    """(content start, closing brace index) of every closed outermost \\boxed{...}, in one pass."""
    depth, open_at, boxes = 0, [], []   # open_at: (content start, depth at which the box closes)
    for m in _BOX_EVENT.finditer(text):
        if m.group() == "}":
            if open_at and open_at[-1][1] == depth:
                start = open_at.pop()[0]
                if not open_at:         # a box inside another box is part of that box's answer
                    boxes.append((start, m.start()))
            depth = max(depth - 1, 0)
        else:
            depth += 1
            if m.group() != "{":
                open_at.append((m.end(), depth))
    return boxes

def find_answer(text: str) -> AnswerLine | None:
    """The completion's answer line (see the rule above), or None if it commits to nothing."""
    boxes, k, start = _closed_boxes(text), 0, 0
    while start <= len(text):
        nl = text.find("\n", start)
        end = len(text) if nl == -1 else nl
        inside = []
        while k < len(boxes) and boxes[k][1] < end:    # boxes that close on this line
            inside.append(text[boxes[k][0]:boxes[k][1]].strip())
            k += 1
        answer = " ".join(inside)
        if not answer:
            mark = _ANSWER_MARK.search(text, start, end)
            answer = text[mark.end():end].replace("*", "").strip() if mark else ""
        if answer:
            return AnswerLine(answer, start, end + (nl != -1), nl != -1)
        if nl == -1:
            return None
        start = nl + 1
    return None

def extract_answer(text: str) -> str | None:
    """The answer a completion commits to, or None (which counts as incorrect).

    >>> extract_answer("2 + 3 = 5\\nAnswer: 5\\nQuestion: 1 + 1?\\nAnswer: 2")
    '5'
    >>> extract_answer("so \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    """
    found = find_answer(text)
    return found.answer if found else None

def single_number(s: str) -> Decimal | None:
    """The one numeric value written in s, or None when s holds no number or two different ones."""
    values = {Decimal(m.group().replace(",", "")) for m in _NUMBER.finditer(s)}
    return values.pop() if len(values) == 1 else None

def answers_match(pred: str, gold: str) -> bool:
    """A numeric gold by value against the one number in pred; any other gold as a cleaned string."""
    g = gold.strip().replace("$", "").replace(",", "").rstrip(".")
    if _NUMBER.fullmatch(g):
        return single_number(pred) == Decimal(g)
    clean = lambda s: s.replace("$", "").replace("*", "").strip().removesuffix(".").strip()  # noqa: E731
    return clean(pred) == clean(gold)

def is_correct(completion: str, gold: str) -> bool:
    pred = extract_answer(completion)
    return pred is not None and answers_match(pred, gold)

# Steps: the non-empty lines before the answer line (the prompt asks for one step per line, and GSM8K
# rationales are written that way). Step counts are easy to hack (pad an answer with trivially valid
# steps), so the trainer logs steps per answer; watch it.

def split_steps(completion: str) -> list[str]:
    found = find_answer(completion)
    body = completion if found is None else completion[:found.start]
    return [line.strip() for line in body.split("\n") if line.strip()]


# ----------------------------------------------------------------------------------------------------
# Toy PRM (frozen): a transparent rule behind a quantile-regression PRM's interface
#
# The paper's PRM gives quantiles q_tau(s) of the probability of success after step s, given every
# step so far (tiny_task/build_prm.py trains one). The toy PRM judges each step's arithmetic alone:
# a step is false if any equation in it is false, true if it has a true one and no false one, else
# unjudged (NaN: no opinion). p(sound) ~ Beta(1 + k, 1) for a true step, Beta(1, 1 + k) for a false
# one (k = EVIDENCE), and q_tau is that Beta's tau-quantile. Per step, not per equation: more true
# equations on a line do not raise its score, and a line of prose is neutral.
#   step                      t  f   q_0.1  q_0.5  q_0.9
#   "47 + 28 = 75"            1  0   0.63   0.87   0.98
#   "so we subtract"          0  0   NaN    NaN    NaN
#   "75 - 19 = 55"            0  1   0.02   0.13   0.37
# Its blind spot is deliberate, and a real PRM's too: it checks that equations are true, not that they
# use the problem's numbers or reach the answer. A miscopied number, or a solution that stops one
# operation early, is all sound steps: a fluent failure. Centering lets it beat other wrong rollouts,
# never a right one in its group. Any string scores in linear time: an equation's left side is the run
# of arithmetic characters before "=", at most MAX_EXPR characters and MAX_DIGITS digits per number.

MAX_EXPR, MAX_DIGITS = 120, 15
_EXPR_CHARS = frozenset("0123456789.,+-–−*/×x÷()$ ")  # with the en dash and minus sign
_RHS = re.compile(rf"\s*\$?\s*(-?[0-9][0-9,]{{0,{2 * MAX_DIGITS}}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?)(?![0-9])")
_RHS_GOES_ON = re.compile(r"[A-Za-z]*\s*[-–−+*/×÷%^(]|\s+[0-9]")
_TIMES = re.compile(r"(?<=[0-9)])\s*[x×]\s*(?=[0-9(])")    # "3 x 4", "3x4"; "3x + 4" is algebra
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_ANNOTATION = re.compile(rf"<<([^<>=]{{1,{MAX_EXPR}}})=([^<>=]{{1,{2 * MAX_DIGITS}}})>>")
_BIN_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b if b else None}

def safe_eval(expr: str, need_op: bool = False) -> float | None:
    """+ - * / and parentheses over numbers; anything else (x/0, inf, too long) gives None. Model text
    never reaches eval(): ast.parse only builds a tree, which we walk. need_op: "3" alone gives None."""
    expr = _TIMES.sub("*", _THOUSANDS.sub("", expr)).replace("$", "").replace("÷", "/") \
        .replace("–", "-").replace("−", "-").strip()
    if not expr or len(expr) > MAX_EXPR or re.search(rf"[0-9]{{{MAX_DIGITS + 1}}}", expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if need_op and not isinstance(tree, ast.BinOp):
        return None

    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            a, b = walk(node.left), walk(node.right)
            return None if a is None or b is None else _BIN_OPS[type(node.op)](a, b)
        return None

    try:
        value = walk(tree)
    except (RecursionError, OverflowError):
        return None
    return value if value is not None and math.isfinite(value) else None

def _lhs_before(text: str, eq: int) -> str | None:
    """The arithmetic run that ends at text[eq] == "=", or None (too long, or it starts mid-word)."""
    i = eq
    while i > 0 and text[i - 1] in _EXPR_CHARS and (text[i - 1] != "." or text[i:i + 1].isdigit()):
        i -= 1
        if eq - i > MAX_EXPR:
            return None
    comma = text.rfind(", ", i, eq)                   # "2, 3 + 4 = 7": a list, then an equation
    i = comma + 1 if comma != -1 else i
    m = re.search(r"[0-9(]|-(?=[0-9(])", text[i:eq])  # start at a number, sign or parenthesis
    if m is None or text[i:i + m.start()].strip(" $"):
        return None                                    # "9 hours * 2/3 = 6": the left operand is words
    start = i + m.start()
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
        return None                                    # "1e999 + 1", "v2 + 3": not a clean start
    return text[start:eq]

def check_equations(step: str) -> tuple[int, int]:
    """(true, false) counts of the checkable arithmetic equations written in one step."""
    pairs = [(m.group(1), m.group(2)) for m in _ANNOTATION.finditer(step)]  # GSM8K's <<9*2=18>>
    plain = _ANNOTATION.sub("", step)                  # "9 * 2 = $<<9*2=18>>18" -> "9 * 2 = $18"
    for eq in (m.start() for m in re.finditer("=", plain)):
        rhs = _RHS.match(plain, eq + 1)
        if rhs and _RHS_GOES_ON.match(plain, rhs.end()):
            continue                                   # "= 3 1/2", "= 2/5", "= 50%": not one number
        lhs = _lhs_before(plain, eq)
        if rhs and lhs:
            pairs.append((lhs, rhs.group(1)))
    verdicts = [math.isclose(v, c, rel_tol=1e-6, abs_tol=1e-6) for v, c in
                ((safe_eval(lhs, need_op=True), safe_eval(rhs)) for lhs, rhs in pairs)
                if v is not None and c is not None]   # not checkable: no evidence either way
    return sum(verdicts), len(verdicts) - sum(verdicts)

@functools.lru_cache(maxsize=None)
def beta_quantiles(a: float, b: float, taus: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of Beta(a, b), by inverting its CDF on a fine grid (no scipy needed)."""
    x = np.linspace(0.0, 1.0, 20001)
    logpdf = (a - 1) * np.log(np.clip(x, 1e-12, 1)) + (b - 1) * np.log(np.clip(1 - x, 1e-12, 1))
    cdf = np.cumsum(np.exp(logpdf - logpdf.max()))
    return tuple(float(np.interp(t, cdf / cdf[-1], x)) for t in taus)

class ToyPRM:
    """Every PRM here has `taus`, `default_tau` (None: read the lowest), score(question, steps) -> (S, Q)
    per-step quantiles of p(step is sound), and score_batch(questions, steps) -> [(S_i, Q)]."""
    taus, default_tau = (0.1, 0.5, 0.9), None
    EVIDENCE = 4.0  # pseudo-counts a step's verdict adds to the uniform Beta(1, 1) prior

    def score(self, question: str, steps: list[str]) -> torch.Tensor:
        rows = []
        for step in steps:
            t, f = check_equations(step)
            rows.append(beta_quantiles(1.0, 1 + self.EVIDENCE, self.taus) if f else
                        beta_quantiles(1 + self.EVIDENCE, 1.0, self.taus) if t else (math.nan,) * len(self.taus))
        return torch.tensor(rows, dtype=torch.float32).reshape(len(steps), len(self.taus))  # (S, Q)

    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        return [self.score(q, s) for q, s in zip(questions, steps)]


# ----------------------------------------------------------------------------------------------------
# Learned PRMs (frozen), behind the same interface: the model reads the plain prompt, then the steps,
# and is read at each step's last token.
#   token classification, quantile head (id2label q0.1, q0.5, ...): raw outputs z map to quantiles that
#       cannot cross: q_tau1 = sigmoid(z_1), q_tauk = sigmoid(z_1 + softplus(z_2) + ... + softplus(z_k));
#   token classification, two-class head ("bad" / "good"): p(good), one score (tau 0.5);
#   causal LM (Math-Shepherd style): each step is written "step <tag>", and the next-token distribution
#       at the tag gives p(good) / (p(good) + p(bad)). Math-Shepherd: tag "ки", tokens "+" and "-";
#       --prm-tag / --prm-tokens, or progrs_step_tag / progrs_step_tokens in its config, set others.
# A PRM's config may name the quantile to read (progrs_quantile); --prm-quantile wins.

STEP_SEP = "\n"
_TAU_LABEL = re.compile(r"q_?(0?\.[0-9]+)")
_GOOD_LABEL = re.compile(r"good|pos|\+|correct|1", re.IGNORECASE)

def prm_inputs(tokenizer, question: str, steps: list[str], tag: str | None = None):
    """(ids of prompt + steps, index of each step's last token: its separator or tag). Each piece is
    tokenised alone, so a step's end is exact whatever the tokenizer would merge across it."""
    tok = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, ends = tok(build_prompt(question)), []
    for step in steps:
        ids = ids + tok(f"{step} {tag}" if tag else step + STEP_SEP)
        ends.append(len(ids) - 1)
        ids = ids + (tok(STEP_SEP) if tag else [])
    return ids, ends

def quantiles_from_logits(z: torch.Tensor) -> torch.Tensor:
    """(..., Q) raw head outputs -> (..., Q) quantiles in (0, 1), strictly increasing along the last dim."""
    steps = torch.cat([z[..., :1], torch.nn.functional.softplus(z[..., 1:])], -1)
    return torch.sigmoid(steps.float().cumsum(-1))

class ModelPRM:
    def __init__(self, name: str, device, amp, tag=None, tokens=None, batch_size: int = 64):
        import transformers as tf

        check_model_source("--prm", name)
        try:
            config = tf.AutoConfig.from_pretrained(name)
            self.causal = bool(tag) or any(a.endswith("ForCausalLM") for a in config.architectures or [])
            auto = tf.AutoModelForCausalLM if self.causal else tf.AutoModelForTokenClassification
            self.tokenizer = tf.AutoTokenizer.from_pretrained(name)
            self.model, info = auto.from_pretrained(name, dtype=torch.float32, output_loading_info=True)
        except Exception as e:  # whatever the library raises: truncated weights, a head size mismatch
            raise ProgrsError(f"--prm {name}: could not load it ({first_line(e)})") from None
        self.default_tau, self.tag, self.good = getattr(config, "progrs_quantile", None), None, 0
        labels = [str(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        taus = [_TAU_LABEL.fullmatch(x) for x in labels]
        if self.causal:
            self.tag = tag or getattr(config, "progrs_step_tag", "ки")
            words = tokens.split(",") if tokens else getattr(config, "progrs_step_tokens", ["+", "-"])
            for flag, word in (("--prm-tag", self.tag), ("--prm-tokens", words[0]), ("--prm-tokens", words[1])):
                if len(self.tokenizer.encode(word, add_special_tokens=False)) != 1:
                    raise ProgrsError(f"{flag}: {word!r} is not one token of the tokenizer of --prm {name} "
                                      "(Math-Shepherd's: tag ки, tokens +,-)")
            pair = [self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
            self.kind, self.taus, self.read = "step-tag", (0.5,), lambda z: z[:, pair].softmax(-1)[:, :1]
        elif set(info["missing_keys"]) - {n for n, _ in self.model.base_model.named_parameters(
                prefix=self.model.base_model_prefix)}:  # from_pretrained would make up a random head
            raise ProgrsError(f"--prm {name}: this checkpoint has no classification head "
                              f"({', '.join(sorted(info['missing_keys']))} missing); expected a trained PRM")
        elif all(taus):
            self.kind, self.taus, self.read = "quantile", tuple(float(m.group(1)) for m in taus), quantiles_from_logits
            if list(self.taus) != sorted(set(self.taus)):
                raise ProgrsError(f"--prm {name}: quantile labels {labels} are not increasing taus")
        elif len(labels) == 2:
            self.good = ([i for i, x in enumerate(labels) if _GOOD_LABEL.search(x.replace("LABEL_", ""))]
                         or [1])[-1]
            self.kind, self.taus = "two-class", (0.5,)
            self.read = lambda z: z.softmax(-1)[:, self.good:self.good + 1]
        else:
            raise ProgrsError(f"--prm {name}: expected a quantile head (labels q0.1, q0.5, ...) or a "
                              f"two-class head, got {len(labels)} outputs {labels[:6]}")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.amp, self.batch_size = device, amp, batch_size
        self.max_len = min(getattr(self.model.config, "max_position_embeddings", None) or 4096, 4096)

    @torch.no_grad()
    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        """A frozen PRM is a function of its input: each distinct (question, steps) is scored once (a
        group often repeats its completions), in right-padded batches, read at each step's end."""
        keys = [(q, tuple(s)) for q, s in zip(questions, steps)]
        unique = list(dict.fromkeys(keys))
        items = [prm_inputs(self.tokenizer, q, list(s), self.tag) for q, s in unique]
        items = [(ids[:self.max_len], ends) for ids, ends in items]  # steps cut off get no opinion
        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            ids = torch.full((len(chunk), max(len(x) for x, _ in chunk)), self.tokenizer.pad_token_id)
            att = torch.zeros_like(ids)
            for r, (x, _) in enumerate(chunk):
                ids[r, :len(x)], att[r, :len(x)] = torch.tensor(x), 1
            with self.amp():  # a causal LM's vocabulary head runs only at the steps' ends
                h = (self.model.base_model if self.causal else self.model)(
                    input_ids=ids.to(self.device), attention_mask=att.to(self.device))
                h = h.last_hidden_state if self.causal else h.logits                  # (b, L, H or K)
            for r, (_, ends) in enumerate(chunk):
                at = h[r, [e for e in ends if e < self.max_len]]
                z = (self.model.get_output_embeddings()(at) if self.causal else at).float().cpu()  # (S', K)
                q = self.read(z)                                                      # (S', Q)
                out.append(torch.cat([q, torch.full((len(ends) - len(q), q.shape[1]), math.nan)]))  # (S, Q)
        scored = dict(zip(unique, out))
        return [scored[k] for k in keys]

    def score(self, question: str, steps: list[str]) -> torch.Tensor:
        return self.score_batch([question], [steps])[0]


# ----------------------------------------------------------------------------------------------------
# Rollouts: one batched, KV-cached generate() per step for P prompts x G samples, left-padded.
#
# Exactly on-policy: generate() gets a GenerationConfig holding only what the trainer sets (temperature,
# top_k=0, top_p=1.0; greedy for evaluation), swapped in for the model's own while it runs, since
# generate() fills unset values from that (a hub model's top_k or repetition_penalty) and then from
# global defaults (top_k=50): the gradient would be taken for a distribution we did not sample from.
# A row stops after its answer line (StopAtAnswer) or at EOS. The completion mask covers the tokens up
# to there, EOS included (or the model never learns to stop), and is built from positions, not from
# `token == pad`: pad is often EOS (Qwen2.5). Rows that hit max_new_tokens are counted as truncated.

def completion_mask(completions: torch.Tensor, eos_ids: list[int], stopped_at=None):
    """(B, T) completion tokens -> (mask (B, T), truncated (B,)). A row ends at its first EOS (kept)
    or after stopped_at[row] tokens (its answer line; 0 = did not stop there), whichever is first."""
    B, T = completions.shape
    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device))   # (B, T)
    has_eos = is_eos.any(1)                                                              # (B,)
    length = torch.where(has_eos, is_eos.int().argmax(1) + 1, T)                         # (B,)
    stopped = (torch.zeros(B, dtype=torch.long) if stopped_at is None else stopped_at).to(completions.device)
    length = torch.where(stopped > 0, torch.minimum(length, stopped), length)           # (B,)
    mask = torch.arange(T, device=completions.device)[None, :] < length[:, None]        # (B, T)
    return mask, ~has_eos & (stopped == 0)

def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    return sorted(set([ids] if isinstance(ids, int) else list(ids or [])) | {tokenizer.eos_token_id})

@functools.lru_cache(maxsize=8)
def newline_tokens(tokenizer) -> torch.Tensor:
    """(V,) bool: the token ids whose text holds a newline, the only places an answer line can end."""
    return torch.tensor(["\n" in t for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])])

class StopAtAnswer:
    """generate()'s stopping criterion: a row is done once its answer line is finished. Only rows whose
    last token holds a newline are decoded and checked; stopped[row] = its length when it stopped."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len, self.stopped = tokenizer, prompt_len, {}
        self.newline = newline_tokens(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].cpu()                                                    # (B,)
        ends_line = (last < len(self.newline)) & self.newline[last.clamp(max=len(self.newline) - 1)]
        for row in ends_line.nonzero().flatten().tolist():
            found = None if row in self.stopped else find_answer(
                self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True))
            if found is not None and found.ended:
                self.stopped[row] = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(len(last), dtype=torch.bool)
        done[list(self.stopped)] = True
        return done.to(input_ids.device)

@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int,
             temperature: float, amp, chat: bool = False) -> dict:
    """n samples per prompt (temperature 0: one greedy completion each); rows are prompt-major."""
    from transformers import GenerationConfig, StoppingCriteriaList

    # a chat template already wrote the special tokens it needs: do not add them a second time
    enc = tokenizer(prompts, return_tensors="pt", padding=True,
                    add_special_tokens=not chat).to(model.device)                # (P, Tp), left pad
    Tp, eos_ids = enc["input_ids"].shape[1], eos_token_ids(model, tokenizer)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
        if temperature > 0 else dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=n,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, **sampling)
    stop = StopAtAnswer(tokenizer, Tp)
    shipped, model.generation_config = model.generation_config, config
    try:
        with amp():
            seqs = model.generate(**enc, generation_config=config, stopping_criteria=StoppingCriteriaList([stop]))
    finally:
        model.generation_config = shipped
    completions = seqs[:, Tp:]                                                    # (B, T), B = P*n
    stopped_at = torch.tensor([stop.stopped.get(r, 0) for r in range(len(seqs))])  # (B,)
    mask, truncated = completion_mask(completions, eos_ids, stopped_at)           # (B, T), (B,)
    texts = [tokenizer.decode(c[m], skip_special_tokens=True) for c, m in zip(completions, mask)]
    prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)                   # (B, Tp)
    return dict(input_ids=seqs, attention_mask=torch.cat([prompt_mask, mask.long()], 1),
                completion_mask=mask, truncated=truncated, texts=texts, prompt_len=Tp)


# ----------------------------------------------------------------------------------------------------
# Loss and update
#
# Token log-probs come from one forward pass over prompt + completion: fp32 logits divided by the
# sampling temperature (we sampled from softmax(logits / T)), position ids rebuilt from the attention
# mask as generate() builds them for left-padded rows. Per-token loss, summed over completion tokens
# and divided by N, the completion tokens of the *whole batch*, so micro-batching changes memory, never
# the gradient:
#     L = -(1/N) sum_i sum_t min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) [+ kl_coef * k3_it]
# With one update per batch (--ppo-epochs 1) the old log-probs are this forward pass's, detached:
# rho = 1, the clip never acts, and this is REINFORCE with group baselines. With K > 1 epochs the clip
# keeps later epochs near the policy that sampled. The logged loss says little: with rho = 1 it is
# -(1/N) sum_i A_i * len_i, a length-weighted sum of advantages (negative in --mode progrs, where right
# rollouts keep an uncentered bonus), while the gradient is -(1/N) sum_i A_i sum_t grad log pi(y_it).
# Watch accuracy. KL to the initial model (k3: exp(ref - logp) - (ref - logp) - 1) is off by default:
# with verifiable rewards and few steps the policy drifts little, and a reference costs a second model.

PPO_CLIP = 0.2
LOGIT_BLOCK = 2 ** 26  # positions x vocabulary per block of fp32 logits: 256 MB, ~440 positions at 151,936

def _head_logprobs(hidden, targets, weight, bias, temperature: float):
    """(N, H) final hidden states, (N,) targets -> (N,) log-probs, with fp32 logits (N, V)."""
    logits = hidden.float() @ weight.float().T                                    # (N, V) fp32
    logits = (logits if bias is None else logits + bias.float()) / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)

def token_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float, amp):
    """log pi(y_t | y_<t) for every completion token: (B, Tp + T) -> (B, T). The body runs under `amp`
    (bf16 on a GPU); the head is read as a linear map of the last hidden state (load_model checks it)
    and runs in fp32, in blocks of LOGIT_BLOCK logits recomputed in the backward pass, so the full
    (B, T, V) logits never exist at once."""
    B, T = input_ids.shape[0], input_ids.shape[1] - prompt_len
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                   # (B, Tp + T)
    with amp():
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False).last_hidden_state
    hidden = hidden[:, prompt_len - 1:-1].reshape(B * T, -1)    # (B*T, H): states that predict y_t
    targets = input_ids[:, prompt_len:].reshape(B * T)                            # (B*T,)
    head = model.get_output_embeddings()
    rows, out = max(1, LOGIT_BLOCK // head.weight.shape[0]), []
    for i in range(0, B * T, rows):
        args = (hidden[i:i + rows], targets[i:i + rows], head.weight, head.bias, temperature)
        out.append(torch.utils.checkpoint.checkpoint(_head_logprobs, *args, use_reentrant=False)
                   if torch.is_grad_enabled() else _head_logprobs(*args))
    return torch.cat(out).view(B, T)                                              # (B, T)

def policy_loss(logp, old_logp, adv, mask, n_tokens, ref_logp=None, kl_coef=0.0):
    """Clipped policy-gradient (+ optional k3 KL) loss of one micro-batch, over the whole batch's N."""
    ratio = torch.exp(logp - old_logp)                                            # (b, T)
    a = adv[:, None]                                                              # (b, 1)
    per_token = -torch.min(ratio * a, ratio.clamp(1 - PPO_CLIP, 1 + PPO_CLIP) * a)
    kl = None
    if ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1                                                 # (b, T), >= 0
        per_token = per_token + kl_coef * kl
    return (per_token * mask).sum() / n_tokens, (None if kl is None else (kl * mask).sum() / n_tokens)

def update_policy(model, optimizer, batch, adv, args, amp, ref_model=None) -> dict:
    """--ppo-epochs optimizer steps on one batch, each accumulating all micro-batches."""
    mask = batch["completion_mask"].float()                                       # (B, T)
    adv, n_tokens, Tp = adv.to(mask.device), mask.sum().clamp(min=1), batch["prompt_len"]
    slices = [slice(i, i + args.micro_batch) for i in range(0, mask.shape[0], args.micro_batch)]
    old, ref, stats = {}, {}, {}
    model.train()
    for epoch in range(args.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = kl_sum = 0.0
        for k, s in enumerate(slices):
            ids, att = batch["input_ids"][s], batch["attention_mask"][s]
            logp = token_logprobs(model, ids, att, Tp, args.temperature, amp)     # (b, T)
            if epoch == 0:
                old[k] = logp.detach()  # the same forward path as the update: rho starts at 1
                if ref_model is not None:
                    with torch.no_grad():
                        ref[k] = token_logprobs(ref_model, ids, att, Tp, args.temperature, amp)
            loss, kl = policy_loss(logp, old[k], adv[s], mask[s], n_tokens, ref.get(k), args.kl_coef)
            loss.backward()
            loss_sum, kl_sum = loss_sum + loss.item(), kl_sum + (0.0 if kl is None else kl.item())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise ProgrsError(f"non-finite gradient norm at ppo epoch {epoch}; lower --lr")
        optimizer.step()
        stats = stats or dict(loss=loss_sum, kl=kl_sum, grad_norm=float(grad_norm))  # the first epoch's
    model.eval()
    return stats


# ----------------------------------------------------------------------------------------------------
# Training loop. Each step: P prompts -> G rollouts each -> verify (r) -> PRM step scores ->
# coherence (b) -> centering (c) -> advantages (A) -> one policy update. Greedy pass@1 on the eval set
# at the start, every --eval-every steps and at the end; a checkpoint every --save-every steps.

def score_completions(problems: list[dict], texts: list[str], prm, q_index: int, lam_var: float) -> dict:
    """Verify and PRM-score completions (one problem per text): lists, one entry per completion.
    Nothing a model writes stops a run: a completion whose verification or step splitting raises is
    judged wrong with no steps (b = 0) and counted in `unscorable`."""
    out = {k: [] for k in ("correct", "b", "step_scores", "n_steps", "trace_error", "unscorable", "judged")}
    steps = []
    for prob, text in zip(problems, texts):
        try:
            s, ok = split_steps(text), is_correct(text, prob["gold"])
            # a right answer reached through at least one false equation (the verifier cannot see it)
            trace, bad = ok and any(check_equations(x)[1] > 0 for x in s), False
        except Exception:
            s, ok, trace, bad = [], False, False, True
        steps.append(s)
        for key, value in (("correct", ok), ("trace_error", trace), ("unscorable", bad), ("n_steps", len(s))):
            out[key].append(value)
    for q in prm.score_batch([p["question"] for p in problems], steps):            # [(S_i, Q)]
        out["step_scores"].append(q[:, q_index].tolist())
        out["judged"].append(bool((~q[:, q_index].isnan()).any()))
        out["b"].append(coherence_score(q[:, q_index], lam_var=lam_var))
    return out

def rollout_step(model, tokenizer, problems: list[dict], args, prm, amp, rng=None) -> dict:
    """Sample G rollouts for each of P problems and compute everything the update needs."""
    t0 = time.perf_counter()
    prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in problems]
    batch = generate(model, tokenizer, prompts, args.group_size, args.max_new_tokens, args.temperature, amp,
                     args.chat)
    t1 = time.perf_counter()
    P, G = len(problems), args.group_size
    scored = score_completions([p for p in problems for _ in range(G)], batch["texts"], prm, args.q_index,
                               args.lam_var)                                      # prompt-major
    correct = torch.tensor(scored["correct"]).view(P, G)                          # (P, G)
    b = torch.tensor(scored["b"], dtype=torch.float32).view(P, G)                 # (P, G)
    b_used = control_bonus(b, args.bonus_control, rng)                            # (P, G)
    adv, a_out, bonus = compute_advantages(correct, b_used, args.mode, args.lam)  # (P, G) each
    batch.update(scored, correct=correct, b_grid=b, adv=adv, a_out=a_out, bonus=bonus,
                 t_generate=t1 - t0, t_score=time.perf_counter() - t1)
    return batch

def fluent_rate(scored: dict, right_pool) -> float | None:
    ff = fluent_failures(torch.tensor(scored["b"]), torch.tensor(scored["correct"]),
                         torch.tensor(scored["judged"]), right_pool)
    return None if ff is None else float(ff.float().mean())

@torch.no_grad()
def evaluate(model, tokenizer, problems: list[dict], args, prm, amp, right_pool=()) -> dict:
    """Greedy pass@1, with the trace-error rate, steps per answer, mean b and fluent-failure rate of the
    greedy completions; with --eval-samples K > 0 also sampled pass@1: the mean over K samples per
    problem at the training temperature, which is what the policy does and what RL optimises."""
    def complete(n, temperature):  # the problems' completions, n per problem, problem-major
        texts, chunk = [], max(1, args.eval_batch // n)
        for i in range(0, len(problems), chunk):
            prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in problems[i:i + chunk]]
            texts += generate(model, tokenizer, prompts, n, args.max_new_tokens, temperature, amp,
                              args.chat)["texts"]
        return texts

    texts = complete(1, 0.0)
    s = score_completions(problems, texts, prm, args.q_index, args.lam_var)
    n_right = sum(s["correct"])
    out = dict(eval_accuracy=n_right / len(problems), eval_fluent_failure_rate=fluent_rate(s, right_pool),
               eval_trace_error_rate=sum(s["trace_error"]) / max(n_right, 1),
               eval_steps_per_answer=float(np.mean(s["n_steps"])),
               eval_process_score=float(np.mean(s["b"])), texts=texts)
    if args.eval_samples > 0:
        # Its own seeded random stream, restored afterwards: every evaluation of a run draws the
        # same random numbers, and how often a run evaluates does not change its training.
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(args.seed)
            sampled = complete(args.eval_samples, args.temperature)
        s = score_completions([p for p in problems for _ in range(args.eval_samples)], sampled, prm,
                              args.q_index, args.lam_var)
        out.update(eval_sampled_accuracy=float(np.mean(s["correct"])),
                   eval_sampled_fluent_failure_rate=fluent_rate(s, right_pool),
                   eval_sampled_process_score=float(np.mean(s["b"])), sampled_texts=sampled)
    return out

def step_metrics(batch: dict, args, right_pool=None) -> dict:
    """One JSON line of what happened in a training step. Marks batch["fluent"] (P, G) for the
    teaching view, then adds the step's right b's to right_pool (a deque of the recent ones)."""
    correct, b, bonus, adv = batch["correct"], batch["b_grid"], batch["bonus"], batch["adv"]
    ff = fluent_failures(b.flatten(), correct.flatten(), torch.tensor(batch["judged"]), right_pool or ())
    fluent = batch["fluent"] = torch.zeros_like(correct) if ff is None else ff.view_as(correct)  # (P, G)
    k, n_right = correct.sum(-1), int(correct.sum())
    push = torch.where((k == 0)[:, None], adv.clamp(min=0), 0.0)   # (P, G): A > 0 in all-wrong groups
    if right_pool is not None:
        right_pool.extend(b[correct].tolist())
    mean = lambda x: float(x.mean()) if x.numel() else None  # noqa: E731  (null: e.g. no right rollout)
    return dict(
        train_accuracy=n_right / correct.numel(),
        process_score=mean(b), process_score_correct=mean(b[correct]), process_score_incorrect=mean(b[~correct]),
        bonus_correct=mean(bonus[correct]), bonus_incorrect_abs=mean(bonus[~correct].abs()),
        groups_all_correct=int((k == args.group_size).sum()), groups_all_wrong=int((k == 0).sum()),
        dominance_violations=dominance_violations(adv, correct),
        trace_error_rate=sum(batch["trace_error"]) / max(n_right, 1),
        steps_per_answer=float(np.mean(batch["n_steps"])),
        completion_tokens=float(batch["completion_mask"].sum(-1).float().mean()),
        truncated=int(batch["truncated"].sum()), unscorable=int(sum(batch["unscorable"])),
        fluent_failure_rate=None if ff is None else float(ff.float().mean()),
        # the share of the positive advantage in all-wrong groups that goes to fluent failures
        all_wrong_push_to_fluent=float(push[fluent].sum() / push.sum()) if push.sum() > 0 else None)

def teaching_view(batch: dict, problems: list[dict], width: int = 60) -> str:
    """One rollout group as a table: the most mixed group of the batch (most right-wrong pairs)."""
    correct, G = batch["correct"], batch["correct"].shape[1]
    fluent, k = batch.get("fluent", torch.zeros_like(correct)), correct.sum(-1)
    i = int((k * (G - k)).argmax())
    lines = [f"question: {problems[i]['question'][:200]}   gold: {problems[i]['gold']}",
             f"{'ok':>3} {'step scores':<24} {'b':>5} {'c':>6} {'A_out':>6} {'A':>6}  completion"]
    for j in range(G):
        r = i * G + j
        steps = " ".join("  - " if math.isnan(s) else f"{s:.2f}" for s in batch["step_scores"][r][:6])
        text = batch["texts"][r].strip().replace("\n", " | ")
        text = text if len(text) <= width else text[:width - 3] + "..."
        ok = "yes" if correct[i, j] else ("no*" if fluent[i, j] else "no")
        lines.append(f"{ok:>3} {steps:<24} {batch['b_grid'][i, j]:5.2f} {batch['bonus'][i, j]:+6.2f} "
                     f"{batch['a_out'][i, j]:+6.2f} {batch['adv'][i, j]:+6.2f}  {text}")
    if fluent[i].any():
        lines.append("no* = fluent failure: wrong, yet b reaches the median b of recent right rollouts")
    return "\n".join(lines)

# A checkpoint is written whole beside OUT/model, then swapped in by two renames, so OUT/model is never
# half a model. A save killed midway (kill -9, power loss) can leave OUT/model.tmp or OUT/model.old
# behind: prepare_out, run before any work, cleans them up and says so.

def save_checkpoint(model, tokenizer, out_dir: Path, step: int) -> None:
    tmp, final, old = out_dir / "model.tmp", out_dir / "model", out_dir / "model.old"
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "progrs_step.json").write_text(json.dumps({"step": step}))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)

def prepare_out(out: str, log=print) -> None:
    """--out exists and is writable, and what an interrupted save left there is cleaned up."""
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / ".progrs_write_test").write_text("")
        (out_dir / ".progrs_write_test").unlink()
    except OSError as e:
        raise ProgrsError(f"--out {out}: cannot write there ({e.strerror or first_line(e)})") from None
    tmp, final, old = out_dir / "model.tmp", out_dir / "model", out_dir / "model.old"
    if old.is_dir() and not final.exists():  # killed between the two renames: old is the last whole model
        old.rename(final)
        log(f"{out}: restored model/ from model.old/, left by an interrupted checkpoint save")
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
            log(f"{out}: removed {d.name}/, left by an interrupted checkpoint save")

def train(model, tokenizer, train_set, eval_set, args, amp, prm, log=print) -> dict:
    """The whole run: returns {"before": eval, "after": eval}, writes OUT/metrics.jsonl and OUT/model."""
    from tqdm.auto import tqdm  # ships with transformers (huggingface_hub)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(vars(args), indent=2, default=str))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # Linear warmup: Adam's first steps move every weight by about lr whatever its gradient's size
    # (its second-moment estimate starts from one sample), which jolts a small model.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / (args.warmup_steps + 1)))
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    rng, queue, right_pool = random.Random(args.seed), [], collections.deque(maxlen=FLUENT_POOL)
    control_rng = torch.Generator().manual_seed(args.seed)  # --bonus-control shuffle only

    def next_problems():  # P prompts at a time, reshuffled every epoch over the train set
        nonlocal queue
        while len(queue) < args.prompts_per_step:
            queue += rng.sample(range(len(train_set)), len(train_set))
        picked, queue = queue[:args.prompts_per_step], queue[args.prompts_per_step:]
        return [train_set[i] for i in picked]

    def run_eval(step, metrics_file):
        t0 = time.perf_counter()
        ev = evaluate(model, tokenizer, eval_set, args, prm, amp, right_pool)
        rec = {k: v for k, v in ev.items() if not k.endswith("texts")}
        metrics_file.write(json.dumps(dict(rec, step=step, t_eval=time.perf_counter() - t0)) + "\n")
        metrics_file.flush()
        sampled = (f", sampled pass@1 {ev['eval_sampled_accuracy']:.1%} ({args.eval_samples} per problem)"
                   if args.eval_samples else "")
        log(f"step {step}: greedy pass@1 {ev['eval_accuracy']:.1%} on {len(eval_set)} problems{sampled}, "
            f"trace errors {ev['eval_trace_error_rate']:.1%} of right answers, "
            f"{ev['eval_steps_per_answer']:.2f} steps/answer")
        return ev

    with open(out_dir / "metrics.jsonl", "w") as mf:
        before = last = run_eval(0, mf)
        view = [train_set[0]]  # before any update there is no batch yet: sample one group to show
        log(teaching_view(rollout_step(model, tokenizer, view, args, prm, amp), view))
        bar = tqdm(range(1, args.steps + 1), desc="progrs", file=sys.stdout, dynamic_ncols=True, disable=None)
        for step in bar:
            problems = next_problems()
            batch = rollout_step(model, tokenizer, problems, args, prm, amp, control_rng)
            t0 = time.perf_counter()
            upd = update_policy(model, optimizer, batch, batch["adv"].flatten(), args, amp, ref_model)
            schedule.step()
            rec = dict(step=step, **step_metrics(batch, args, right_pool), **upd, t_generate=batch["t_generate"],
                       t_score=batch["t_score"], t_update=time.perf_counter() - t0)
            if ref_model is None:
                rec.pop("kl")
            mf.write(json.dumps(rec) + "\n")
            mf.flush()
            bar.set_postfix(acc=f"{rec['train_accuracy']:.2f}", b=f"{rec['process_score']:.2f}",
                            eval=f"{last['eval_accuracy']:.2f}")
            if step % args.eval_every == 0 or step == args.steps:
                last = run_eval(step, mf)
                bar.clear()
                log(teaching_view(batch, problems))
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(model, tokenizer, out_dir, step)
        bar.close()
    for key, name in (("eval_sampled_accuracy", "sampled"), ("eval_accuracy", "greedy")):  # greedy last
        if key in last:
            log(f"{name} pass@1: {before[key]:.1%} -> {last[key]:.1%} ({100 * (last[key] - before[key]):+.1f} "
                f"points) on {len(eval_set)} problems after {args.steps} steps (mode {args.mode}, lam {args.lam})")
    return dict(before=before, after=last)


# ----------------------------------------------------------------------------------------------------
# Main: flags -> device and --out -> data -> model -> PRM -> train

def pick_device(args) -> tuple[torch.device, bool]:
    """(device, use bf16 autocast)."""
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.suppress(RuntimeError):
        device = torch.device(name)
        if device.type == "cpu" or device.type == "cuda" and (device.index or 0) < torch.cuda.device_count():
            return device, args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    raise ProgrsError(f"--device {args.device}: not available on this machine (expected auto, cpu, or "
                      f"cuda:N with N < {torch.cuda.device_count()}, the CUDA devices here)")

def check_model_source(flag: str, name: str) -> None:
    """A local folder with a config.json, or something shaped like a hub id."""
    path = Path(name)
    if path.is_file():
        raise ProgrsError(f"{flag} {name}: a file; expected a model folder or a hub id")
    if not path.exists() and not (re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith(".")):
        raise ProgrsError(f"{flag} {name}: no such folder (expected a model folder or a hub id)")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ProgrsError(f"{flag} {name}: no config.json in this folder (expected a saved model: "
                          "config.json, weights and tokenizer files)")

def load_model(name: str, device: torch.device):
    """Tokenizer + causal LM from a local folder or the hub; the same code path for both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_source("--model", name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        # fp32 master weights even for bf16 runs: bf16 weights would round away lr ~1e-6 updates
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as e:  # whatever the library raises: no network, truncated weights, bad config
        raise ProgrsError(f"--model {name}: could not load it ({first_line(e)})") from None
    tokenizer.padding_side = "left"  # generation appends on the right
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model.to(device).eval()
    # token_logprobs reads the head as a linear map of the last hidden state; check that on 3 tokens
    ids = torch.tensor([[0, 1, 2]], device=device)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
        ours = token_logprobs(model, ids, torch.ones_like(ids), 1, 1.0, contextlib.nullcontext)
    if not torch.allclose(ours.flatten(), ref.flatten(), atol=1e-3):
        raise ProgrsError(f"--model {name}: its logits are not a plain linear head over the last "
                          "hidden state, which token_logprobs assumes")
    return model, tokenizer

def apply_size_defaults(args, n_params: int) -> str:
    """Fill every flag left at None from SIZE_DEFAULTS for the model's size; returns the size."""
    size = "tiny" if n_params < TINY_MAX_PARAMS else "llm"
    for k, v in SIZE_DEFAULTS[size].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    args.save_every = args.save_every or args.eval_every
    return size

def build_prm(args, device, amp):
    """--prm toy -> ToyPRM, else ModelPRM. Reads --prm-quantile, else the PRM's default, else its lowest."""
    prm = ToyPRM() if args.prm == "toy" else ModelPRM(args.prm, device, amp, args.prm_tag, args.prm_tokens)
    q = args.prm_quantile if args.prm_quantile is not None else (prm.default_tau or prm.taus[0])
    if q not in prm.taus:
        raise ProgrsError(f"--prm-quantile: expected one of this PRM's taus {prm.taus}, got {q}")
    args.prm_quantile, args.q_index = q, prm.taus.index(q)
    return prm

def main(argv=None) -> dict:
    from transformers.utils import logging as hf_logging

    args = build_parser().parse_args(argv)
    check_args(args)
    hf_logging.set_verbosity_error()     # errors here are ours, one line each; no loading reports
    hf_logging.disable_progress_bar()
    device, bf16 = pick_device(args)
    prepare_out(args.out)                # a run never starts work it cannot save
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    given = {f: load_data(getattr(args, f), split, f"--{f.replace('_', '-')}")  # fail before loading
             for f, split in (("data", "train"), ("eval_data", "test")) if getattr(args, f)}
    model, tokenizer = load_model(args.model, device)
    n_params = sum(p.numel() for p in model.parameters())
    size = apply_size_defaults(args, n_params)
    train_set = given.get("data") or load_data(args.data, "train", "--data")
    eval_set = given.get("eval_data") or load_data(args.eval_data, "test", "--eval-data")
    eval_set = eval_set[:args.eval_size] if args.eval_size else eval_set
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    prm = build_prm(args, device, amp)
    torch.manual_seed(args.seed)  # loading a PRM may draw random numbers (an untrained head)
    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters ({size} defaults) on {device}"
          f"{' (bf16 autocast)' if bf16 else ''}; {len(train_set)} train / {len(eval_set)} eval "
          f"problems; PRM {args.prm}, tau {args.prm_quantile}\n{json.dumps(vars(args), default=str)}")
    bound = max_dominant_lam(args.group_size)
    if args.mode == "progrs" and args.lam >= bound:
        print(f"warning: --lam {args.lam} >= {bound:.2f}: with G={args.group_size} a wrong rollout "
              "with sound-looking steps can reach a right rollout's advantage", file=sys.stderr)
    return train(model, tokenizer, train_set, eval_set, args, amp, prm)

if __name__ == "__main__":
    try:
        main()
    except ProgrsError as e:
        sys.exit(f"progrs.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("progrs.py: interrupted; metrics so far are in OUT/metrics.jsonl and the last "
                 "checkpoint in OUT/model (its step in progrs_step.json)")
