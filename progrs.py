"""
progrs.py: PROGRS (Process Rewards for Outcome-Guided Steps) in one file.

GRPO on math problems where a step-level process reward model (PRM) adds credit while the verified
final answer stays in charge. The key move is outcome-conditioned centering: inside each prompt's
group of rollouts, the process scores b of the *incorrect* rollouts are shifted to zero mean, so the
PRM can rank wrong answers against each other but can never lift wrong answers as a class.

    pip install -r requirements.txt && python progrs.py  # tiny model in tiny_task/, CPU, offline
    python progrs.py --mode outcome                 # plain GRPO, for comparison
    python progrs.py --prm tiny_task/prm            # a learned quantile-regression PRM
    python progrs.py --model Qwen/Qwen2.5-0.5B      # on a GPU: CUDA + bf16, GSM8K, LLM defaults
    python progrs.py --out out --resume             # continue a run from its last checkpoint
    pytest test_progrs.py

Read top to bottom: the PROGRS idea as pure functions, then the pipeline in the order a step runs.
This file is the whole trainer and imports nothing from its repository: copy it alone and it runs.

From the paper (arXiv 2604.02341; we read its abstract): GRPO with verifiable outcome rewards and a
step-level PRM, the outcome in charge; centering among each group's incorrect rollouts; a frozen
quantile-regression PRM; multi-scale coherence, mu * exp(-lam_var * sigma / mu).
Our reading, where the abstract is silent (marked "our reading" in the code): A = A_out + lam * c,
right rollouts keeping b; the verified answer is the first committed answer line, and decoding stops
there; steps are the lines before it; windows of 2 and 4 judged steps; the default PRM is a toy that
checks each step's arithmetic, read at its lowest quantile.
Left out: a value network; by default, KL to the start (--kl-coef), ratio clipping (--ppo-epochs).
"""
import argparse, ast, collections, contextlib, copy, functools, hashlib, json, logging, math
import operator, os, random, re, shutil, sys, tempfile, time, urllib.request
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.utils.checkpoint

# --------------------------------------------------------------------------------------------------
# The PROGRS idea, as pure functions of (P, G) tensors: P prompts, G rollouts each (torch only)
# Each rollout has an outcome r in {0, 1} (the verifier) and a process score b in [0, 1] (the PRM's
# step scores, combined by coherence_score). The advantage of rollout j of prompt i:
#     A_out_ij = (r_ij - mean_j r_i) / (std_j r_i + eps)   GRPO's advantage (population std)
#     c_ij     = b_ij - mean{ b_ik : r_ik = 0 }   if r_ij = 0       the centered bonus
#     c_ij     = b_ij                             if r_ij = 1       (our reading: right keeps b)
#     A_ij     = A_out_ij + lam * c_ij                              (our reading)

def outcome_conditioned_centering(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Shift the process scores of each group's incorrect rollouts to zero mean.
    scores:  (P, G) float, one process score per rollout (P prompts, G rollouts each; any leading
             shape works, groups are along the last dim).
    correct: (P, G) bool (or 0/1), the verified outcome of each rollout.
    returns: (P, G) centered bonus, same dtype/device/shape:
        c_ij = s_ij - mean{ s_ik : k incorrect }   if rollout j is incorrect
        c_ij = s_ij                                 if rollout j is correct
    Rows with no incorrect rollout are unchanged; a single incorrect rollout gets 0; the sum is
    taken in at least float32, so half-precision scores do not overflow. Among incorrect rollouts
    the PRM's ranking survives, but their bonuses average to 0: the PRM cannot lift wrong answers
    as a class.
    >>> s = torch.tensor([[0.9, 0.2, 0.6, 0.4]])
    >>> ok = torch.tensor([[True, False, False, False]])
    >>> outcome_conditioned_centering(s, ok)
    tensor([[ 0.9000, -0.2000,  0.2000,  0.0000]])
    """
    wrong = ~correct.bool()
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))  # fp16 sums overflow at 65504
    n_wrong = wrong.sum(-1, keepdim=True).clamp(min=1)                      # (P, 1); no 0/0
    wrong_mean = torch.where(wrong, x, 0.0).sum(-1, keepdim=True) / n_wrong  # (P, 1)
    return torch.where(wrong, x - wrong_mean, x).to(scores.dtype)           # (P, G)

ADV_EPS = 1e-6
MODES = ("progrs", "outcome", "absolute", "progrs-strict")

def group_normalize(rewards: torch.Tensor, eps: float = ADV_EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) within each row: (P, G) -> (P, G). Uniform rows give 0."""
    mean = rewards.mean(-1, keepdim=True)                                   # (P, 1)
    std = rewards.std(-1, keepdim=True, correction=0)                       # (P, 1), population
    return (rewards - mean) / (std + eps)

def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")

def compute_advantages(correct: torch.Tensor, b: torch.Tensor, mode: str, lam: float):
    """(P, G) outcomes and process scores -> (advantages A, A_out, centered bonus c), each (P, G).
    progrs: A = A_out + lam * c, and what c does depends on the group:
      mixed:     A_out separates right from wrong; c ranks the wrong rollouts among themselves, and
                 lifts every right rollout by lam * b (right rollouts keep b, our reading);
      all wrong: A_out = 0, so c is the whole signal: which wrong answers had better steps;
      all right: A_out = 0, yet each gets + lam * b: a positive-sample push plain GRPO lacks.
    outcome: plain GRPO. absolute: (r + lam * b) normalised in the group: right scores >= 1, wrong
    <= lam, so at lam = 1 a wrong rollout with b = 1 ties a right one with b = 0 (above 1 it passes
    it); at lam = 1 its harm is in all-wrong groups, where the std division gives a lone fluent
    failure a unit-scale push (b 0.63 among seven 0.02s: A = +2.65, as much as a lone right answer;
    progrs gives it c = +0.53). progrs-strict (our stricter reading): right rollouts are centred
    among themselves too, so there is no offset and no lift.

    A mixed group, an all-wrong group and an all-right group (G = 4, lam = 1):
    >>> ok = torch.tensor([[True, False, False, False], [False] * 4, [True] * 4])
    >>> b = torch.tensor([[0.6, 0.6, 0.2, 0.1], [0.6, 0.2, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]])
    >>> adv, a_out, c = compute_advantages(ok, b, "progrs", lam=1.0)
    >>> print(a_out.numpy().round(2))       # GRPO: only the mixed group has an outcome signal
    [[ 1.73 -0.58 -0.58 -0.58]
     [ 0.    0.    0.    0.  ]
     [ 0.    0.    0.    0.  ]]
    >>> print(c.numpy().round(2))       # wrong rollouts centred among themselves; right ones keep b
    [[ 0.6  0.3 -0.1 -0.2]
     [ 0.3 -0.1 -0.1 -0.1]
     [ 0.6  0.6  0.3  0.3]]
    >>> print(adv.numpy().round(2))     # the fluent wrong rollout (-0.28) stays below the right one
    [[ 2.33 -0.28 -0.68 -0.78]
     [ 0.3  -0.1  -0.1  -0.1 ]
     [ 0.6   0.6   0.3   0.3 ]]
    """
    check_mode(mode)
    r = correct.float()
    a_out = group_normalize(r)
    c = outcome_conditioned_centering(b, correct)
    if mode == "progrs-strict":  # the same centering, roles swapped, centres the right rollouts too
        c = torch.where(correct.bool(), outcome_conditioned_centering(b, ~correct.bool()), c)
    if mode == "outcome":
        return a_out, a_out, c
    if mode == "absolute":
        return group_normalize(r + lam * b), a_out, c
    return a_out + lam * c, a_out, c

# Dominance: with k of G right (p = k/G), A_out(right) - A_out(wrong) = 1 / (sqrt(p(1-p)) + eps),
# which lam times the widest right-wrong gap in c can close; below max_dominant_lam right stays
# above wrong (at it, a tie). The bounds assume b in [0, 1] and the population std above:
#   progrs:        right c = b >= 0, wrong c <= (n-1)/n (n = G - k wrong) -> 2.58 at G = 8
#   progrs-strict: right c >= -(k-1)/k as well                     -> 1.33 at G = 8, 1.03 at 64
#   absolute:      right r + lam*b >= 1, wrong <= lam              -> 1 at any G
# A sample std (TRL's GRPO) shrinks the outcome gap by sqrt((G-1)/G): 2.42, not 2.58, at G = 8.

def max_dominant_lam(group_size: int, mode: str = "progrs", eps: float = ADV_EPS) -> float:
    """The largest lam for which `mode` keeps every right rollout above every wrong one."""
    check_mode(mode)
    if mode == "outcome":
        return math.inf
    if mode == "absolute":
        return 1.0
    bounds = []
    for k in range(1, group_size):  # k right, n = G - k wrong
        n = group_size - k
        widest = (n - 1) / n + ((k - 1) / k if mode == "progrs-strict" else 0.0)
        if widest > 0:
            bounds.append(1 / (math.sqrt(k / group_size * n / group_size) + eps) / widest)
    return min(bounds, default=math.inf)

def dominance_violations(adv: torch.Tensor, correct: torch.Tensor) -> int:
    """Pairs (right i, wrong j) in the same group with A_j >= A_i."""
    pair = correct.bool().unsqueeze(-1) & ~correct.bool().unsqueeze(-2)      # (P, G_i, G_j)
    return int((pair & (adv.unsqueeze(-2) >= adv.unsqueeze(-1))).sum())

# Coherence: b = the mean over window sizes W of the mean over sliding windows (our reading) of W
# step scores of r_coh = mu * exp(-lam_var * sigma / mu): swings are discounted; unjudged (NaN)
# steps are dropped; no judged step gives b = 0 (our reading).

def coherence_score(step_scores, windows=(2, 4), lam_var: float = 1.0) -> float:
    s = torch.as_tensor(step_scores, dtype=torch.float64).reshape(-1)             # (S,)
    s = s[~torch.isnan(s)].clamp(0.0, 1.0)                                       # judged steps
    if s.numel() == 0:
        return 0.0
    per_scale = []
    for w in windows:
        win = s.unfold(0, min(w, s.numel()), 1)                                  # (S - W + 1, W)
        mu, sigma = win.mean(-1), win.std(-1, correction=0)                      # (S - W + 1,) each
        r_coh = mu * torch.exp(-lam_var * sigma / mu.clamp(min=1e-12))
        per_scale.append(torch.where(mu > 0, r_coh, 0.0).mean())
    return float(torch.stack(per_scale).mean())

# Fluent failures, the gauge for PRM hacking: wrong rollouts with a judged step whose b reaches the
# median b of right rollouts (this batch's and the run's last FLUENT_POOL right ones): a rank, free
# of the PRM's scale, defined with no right rollout in the step; None until one is seen.

FLUENT_POOL = 256

def fluent_failures(b, correct, judged, right_b) -> torch.Tensor | None:
    """(N,) process scores, outcomes, has-a-judged-step, and the reference pool of right b's ->
    (N,) bool: wrong rollouts whose b reaches the pool's median (None for an empty pool).
    >>> b = torch.tensor([0.9, 0.7, 0.5, 0.0])
    >>> ok = torch.tensor([True, False, False, False])
    >>> fluent_failures(b, ok, torch.tensor([True, True, True, False]), [0.6, 0.7])
    tensor([False,  True, False, False])
    """
    pool = torch.tensor(list(right_b) + b[correct.bool()].tolist(), dtype=torch.float32)
    if pool.numel() == 0:
        return None
    return ~correct.bool() & judged.bool() & (b.float() >= pool.quantile(0.5))

# --------------------------------------------------------------------------------------------------
# Flags: every knob in one place. Pairs of defaults are (tiny, LLM): tiny for the models in
# tiny_task/ (their task, CPU-sized), LLM for any other (GSM8K); --defaults overrides.

HERE = Path(__file__).resolve().parent
TINY_TASK = HERE / "tiny_task"
TINY_DATA = (str(TINY_TASK / "train.jsonl"), str(TINY_TASK / "test.jsonl"))
FLAGS = [  # (group, flag, type or choices, default or (tiny default, LLM default), help, check)
    ("model", "--model", str, str(TINY_TASK / "model"), "local folder or hub id", None),
    ("model", "--device", str, "auto", "auto | cpu | cuda | cuda:N", None),
    ("model", "--dtype", ["auto", "fp32", "bf16"], "auto", "bf16 autocast (auto: on cuda)", None),
    ("model", "--chat", bool, False, "wrap prompts in the tokenizer's chat template", None),
    ("model", "--defaults", ["auto", "tiny", "llm"], "auto", "which column of defaults", None),
    ("data", "--data", str, (TINY_DATA[0], "gsm8k"), "train prompts: a JSONL file or gsm8k", None),
    ("data", "--eval-data", str, (TINY_DATA[1], "gsm8k"), "eval problems: JSONL or gsm8k", None),
    ("data", "--eval-size", int, (0, 500), "eval problems (0: all)", ">= 0"),
    ("data", "--eval-every", int, (20, 25), "steps between evals", ">= 1"),
    ("data", "--eval-samples", int, 0, "K > 0: sampled pass@1, pass@2, 4, .. <= K", ">= 0"),
    ("data", "--eval-batch", int, (256, 64), "rows per eval batch (problems x samples)", ">= 1"),
    ("rollouts", "--steps", int, (60, 200), "policy updates (0: evaluate only)", ">= 0"),
    ("rollouts", "--prompts-per-step", int, (16, 16), "P: prompts per step", ">= 1"),
    ("rollouts", "--group-size", int, 8, "G: rollouts per prompt (a group to compare)", ">= 2"),
    ("rollouts", "--max-new-tokens", int, (64, 512), "completion length cap", ">= 1"),
    ("rollouts", "--temperature", float, 1.0, "sampling temperature", "> 0"),
    ("rewards", "--mode", list(MODES), "progrs",
     "progrs: A_out + lam*c | outcome: plain GRPO | absolute: r + lam*b | progrs-strict", None),
    ("rewards", "--lam", float, 1.0, "weight of the centered bonus c", ">= 0"),
    ("rewards", "--prm", str, "toy", "toy | a PRM folder | a hub id", None),
    ("rewards", "--prm-quantile", float, None, "PRM tau to read (None: config's, or lowest)", None),
    ("rewards", "--lam-var", float, 1.0, "coherence volatility penalty", ">= 0"),
    ("optimisation", "--lr", float, (1e-4, 1e-6), "AdamW learning rate", "> 0"),
    ("optimisation", "--warmup-steps", int, 10, "linear learning-rate warmup", ">= 0"),
    ("optimisation", "--micro-batch", int, (128, 8), "sequences per forward/backward", ">= 1"),
    ("optimisation", "--ppo-epochs", int, 1, "updates per batch (> 1: clipped ratio)", ">= 1"),
    ("optimisation", "--kl-coef", float, 0.0, "k3 KL to the initial model (0: off)", ">= 0"),
    ("optimisation", "--max-grad-norm", float, 1.0, "gradient clipping", "> 0"),
    ("logging", "--out", str, "out", "metrics.jsonl, config.json and model/ go here", None),
    ("logging", "--save-every", int, None, "steps between checkpoints (None: eval-every)", ">= 1"),
    ("logging", "--seed", int, 0, "same seed, same CPU: same numbers", ">= 0"),
    ("logging", "--resume", bool, False, "continue the run in --out from its checkpoint", None),
]
RESUME_MAY_CHANGE = ("--steps", "--device", "--out", "--resume")  # --resume refuses the rest

class ProgrsError(Exception):
    """Bad input: main() prints the message as one line and exits non-zero."""

def first_line(e) -> str:  # an OSError's reason, else the message's first line, else the type
    if getattr(e, "strerror", None):
        return e.strerror
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

def attr(flag: str) -> str:
    return flag[2:].replace("-", "_")

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PROGRS: GRPO with outcome-conditioned process rewards")

    def one_line_error(message):  # argparse would print the whole usage first
        p.exit(2, f"progrs.py: error: {message}\n")
    p.error = one_line_error
    groups = {}
    for group, flag, kind, default, help, _ in FLAGS:
        kw = dict(action="store_true") if kind is bool else dict(type=kind)
        kw = dict(choices=kind) if isinstance(kind, list) else kw
        pair = isinstance(default, tuple)  # filled in by apply_defaults once the model is known
        shown = f"{default[0]} tiny / {default[1]} LLM" if pair else str(default)
        shown = shown.replace(str(HERE) + os.sep, "")
        groups[group] = groups.get(group) or p.add_argument_group(group)
        groups[group].add_argument(flag, default=None if pair else default,
                                   help=f"{help} (default: {shown})", **kw)
    return p

def check_args(args) -> None:  # one line naming the flag, before anything trains silently wrong
    for _, flag, kind, _, _, rule in FLAGS:
        x = getattr(args, attr(flag))
        if x is not None and kind is float and not math.isfinite(x):  # inf passes every range
            raise ProgrsError(f"{flag}: expected a finite number, got {x}")
        if rule is None or x is None:
            continue
        op, bound = rule.split()
        if not (x >= float(bound) if op == ">=" else x > float(bound)):
            raise ProgrsError(f"{flag}: expected a value {rule}, got {x}")

def apply_defaults(args) -> str:
    """Fill each flag left at a (tiny, LLM) pair; returns "tiny" or "llm", the column used."""
    bundled = TINY_TASK in Path(args.model).resolve().parents
    size = args.defaults if args.defaults != "auto" else ("tiny" if bundled else "llm")
    for _, flag, _, default, _, _ in FLAGS:
        if isinstance(default, tuple) and getattr(args, attr(flag)) is None:
            setattr(args, attr(flag), default[0 if size == "tiny" else 1])
    args.save_every = args.save_every or args.eval_every
    return size

# --------------------------------------------------------------------------------------------------
# Data: JSONL records {"question", "answer"}, the answer bare or a GSM8K rationale ending "#### N".

EXPECTED_JSONL = "expected JSONL with 'question' and 'answer'"

def parse_gold(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip()  # a GSM8K rationale's final answer, or the answer

def record_problem(rec) -> str | None:  # what is wrong with one JSONL record, or None
    q, a = (rec.get("question"), rec.get("answer")) if isinstance(rec, dict) else (None, None)
    if not isinstance(q, str) or isinstance(a, bool) or not isinstance(a, (str, int, float)):
        return "expected an object with a string 'question' and a string or number 'answer'"
    if isinstance(a, float) and not math.isfinite(a):
        return f"expected a finite number 'answer', got {a}"
    if not q.strip() or not parse_gold(str(a)):
        return "empty 'question' or empty final answer"

def load_problems(path) -> list[dict]:
    """[{"question", "gold"}] from a JSONL file; any fault is one line naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ProgrsError(f"{path}: no such data file ({EXPECTED_JSONL})")
    try:  # utf-8-sig: a byte-order mark, which some editors write, is dropped
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProgrsError(f"{path}: not UTF-8 text (byte {e.start}); {EXPECTED_JSONL}") from None
    problems = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028, which is no line end in JSONL
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProgrsError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one "
                              "{\"question\": ..., \"answer\": ...} object per line") from None
        problem = record_problem(rec)
        if problem:
            raise ProgrsError(f"{path}:{lineno}: {problem}")
        problems.append(dict(question=rec["question"].strip(), gold=parse_gold(str(rec["answer"]))))
    if not problems:
        raise ProgrsError(f"{path}: no records ({EXPECTED_JSONL})")
    return problems

# GSM8K by name: the original split (MIT), downloaded once into PROGRS_CACHE (~/.cache/progrs),
# pinned by line count and sha256, moved into place whole; PROGRS_GSM8K_URL names a mirror.

GSM8K_URL = ("https://raw.githubusercontent.com/openai/grade-school-math/master/"
             "grade_school_math/data")
GSM8K_SPLITS = {"train": (7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
                "test": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")}

def download_gsm8k(split: str, path: Path, flag: str) -> None:
    """The pinned `split` into `path`, or a ProgrsError naming the flag and a way out."""
    url = f"{os.environ.get('PROGRS_GSM8K_URL', GSM8K_URL).rstrip('/')}/{split}.jsonl"
    hint = f"pass a local copy instead: {flag} path/to/gsm8k_{split}.jsonl"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
        reason = first_line(getattr(e, "reason", e))
        raise ProgrsError(f"{flag} gsm8k: could not download {url} ({reason}); {hint}") from None
    lines, sha = GSM8K_SPLITS[split]
    got_lines = data.count(b"\n")
    got_sha = hashlib.sha256(data).hexdigest()
    if (got_lines, got_sha) != (lines, sha):
        raise ProgrsError(f"{flag} gsm8k: {url} is not the pinned GSM8K {split} split "
                          f"({got_lines} lines, sha256 {got_sha[:12]}...; expected {lines}, "
                          f"{sha[:12]}...); {hint}")
    part = path.with_suffix(".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_bytes(data)
        part.replace(path)
    except OSError as e:
        raise ProgrsError(f"{flag} gsm8k: cannot write the cache {path} ({first_line(e)}); set "
                          f"PROGRS_CACHE to a writable folder, or {hint}") from None

def load_data(value: str, split: str, flag: str) -> list[dict]:
    """A JSONL file, or `gsm8k` (downloaded once, then read from the cache)."""
    if value != "gsm8k":
        return load_problems(value)
    cache = Path(os.environ.get("PROGRS_CACHE") or Path.home() / ".cache" / "progrs")
    path = cache / f"gsm8k_{split}.jsonl"
    if not path.is_file():  # a cached split was checked before it was moved into place
        download_gsm8k(split, path, flag)
    return load_problems(path)

# The prompt of rollouts, evaluation, learned PRMs and the tiny model's warm start. Given it, a real
# instruct model (--chat) answers at once or in LaTeX prose; one worked exchange in the format the
# toy PRM checks makes it write an equation a line (tiny_task/real_weights.md).
INSTRUCTION = "Solve the problem. Write one step per line, then a last line 'Answer: <answer>'."
CHAT_INSTRUCTION = ("Solve the problem step by step. Write each calculation on its own line as an "
                    "equation with numbers only, like 48 / 2 = 24. Then write a last line "
                    "'Answer: <number>'.")
CHAT_EXAMPLE = ("A baker bakes 24 rolls a day. She sells 15 and gives 4 to a neighbour. How many "
                "rolls are left?", "Given out: 15 + 4 = 19\nLeft: 24 - 19 = 5\nAnswer: 5")

def build_prompt(question: str, tokenizer=None, chat: bool = False) -> str:
    """Plain: INSTRUCTION / "Question: ..." / "Solution:". chat=True: the chat template."""
    if not chat:
        return f"{INSTRUCTION}\nQuestion: {question}\nSolution:\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ProgrsError("--chat: this tokenizer has no chat template (drop --chat for a base "
                          "model)")
    messages = [{"role": "user", "content": f"{CHAT_INSTRUCTION}\n{CHAT_EXAMPLE[0]}"},
                {"role": "assistant", "content": CHAT_EXAMPLE[1]},
                {"role": "user", "content": f"{CHAT_INSTRUCTION}\n{question}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

# --------------------------------------------------------------------------------------------------
# Rollouts: one KV-cached generate() per step for P prompts x G samples, left-padded, our sampling
# settings only (on-policy); rows stop after the answer line (next section) or at EOS, the mask
# built from positions (EOS kept), not from `token == pad`.

def completion_mask(completions: torch.Tensor, eos_ids: list[int], stopped_at=None):
    """(B, T) -> (mask, truncated): rows end at the first EOS (kept) or stopped_at (0: none)."""
    B, T = completions.shape
    device = completions.device
    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=device))       # (B, T)
    has_eos = is_eos.any(1)                                                      # (B,)
    length = torch.where(has_eos, is_eos.int().argmax(1) + 1, T)                 # (B,)
    stopped = (torch.zeros(B, dtype=torch.long) if stopped_at is None else stopped_at).to(device)
    length = torch.where(stopped > 0, torch.minimum(length, stopped), length)   # (B,)
    mask = torch.arange(T, device=device)[None, :] < length[:, None]            # (B, T)
    return mask, ~has_eos & (stopped == 0)

@functools.lru_cache(maxsize=8)
def newline_tokens(tokenizer) -> torch.Tensor:  # (V,): where an answer line can end
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor(["\n" in t for t in texts])

class StopAtAnswer:
    """A row is done once its answer line ends (only rows ending in a newline are decoded)."""
    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.stopped = {}  # row -> completion length at its answer line's end
        self.newline = newline_tokens(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].cpu()                                                # (B,)
        known = last < len(self.newline)  # a model's vocabulary may be larger than its tokenizer
        ends_line = known & self.newline[last.clamp(max=len(self.newline) - 1)]      # (B,)
        for row in ends_line.nonzero().flatten().tolist():
            if row in self.stopped:
                continue
            text = self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True)
            found = find_answer(text)
            if found is not None and found.ended:
                self.stopped[row] = input_ids.shape[1] - self.prompt_len
        done = [row in self.stopped for row in range(len(last))]
        return torch.tensor(done, device=input_ids.device)

@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int,
             temperature: float, amp, chat: bool = False) -> dict:
    """n samples per prompt (temperature 0: one greedy completion each); rows are prompt-major."""
    from transformers import GenerationConfig
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
    enc = enc.to(model.device)  # (P, Tp), left pad; a chat template wrote its special tokens
    Tp = enc["input_ids"].shape[1]
    named = model.generation_config.eos_token_id  # a chat model's <|im_end|>, its base EOS
    named = [named] if isinstance(named, int) else named or []
    # and the pad token: an instruct tokenizer's end of text (Qwen: <|endoftext|>; eos <|im_end|>)
    eos_ids = sorted({tokenizer.eos_token_id, tokenizer.pad_token_id, *named} - {None})
    sampling = dict(do_sample=False)  # greedy
    if temperature > 0:               # the full softmax(logits / T): no top-k, no nucleus
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=n,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, **sampling)
    stop = StopAtAnswer(tokenizer, Tp)
    shipped, model.generation_config = model.generation_config, config        # swapped back below
    try:
        with amp():
            seqs = model.generate(**enc, generation_config=config, stopping_criteria=[stop])
    finally:
        model.generation_config = shipped
    completions = seqs[:, Tp:]                                                   # (B, T), B = P*n
    stopped_at = torch.tensor([stop.stopped.get(r, 0) for r in range(len(seqs))])  # (B,)
    mask, truncated = completion_mask(completions, eos_ids, stopped_at)          # (B, T), (B,)
    texts = [tokenizer.decode(c[m], skip_special_tokens=True) for c, m in zip(completions, mask)]
    prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)                  # (B, Tp)
    return dict(input_ids=seqs, attention_mask=torch.cat([prompt_mask, mask.long()], 1),
                completion_mask=mask, truncated=truncated, texts=texts, prompt_len=Tp)

# --------------------------------------------------------------------------------------------------
# Verifier: exact match on the first committed answer. A completion commits on its *answer line*:
# the first line that closes a \boxed{...} (braces matched) or holds "Answer:" (any case) or "####",
# then text. Decoding stops there: what a base model writes next is never judged or trained. No
# answer line: r = 0. A numeric gold matches an answer holding exactly one number of that value
# ("$1,234.00" == 1234; "5 or 6" never); any other gold, as a string without `$`, `*`, final `.`.

_ANSWER_MARK = re.compile(r"answer[*\s]{0,8}:|####", re.IGNORECASE)
_BOX_EVENT = re.compile(r"\\boxed\s*\{|[{}]")
_NUMBER = re.compile(r"(?<![0-9.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")

AnswerLine = NamedTuple("AnswerLine", [("answer", str), ("start", int), ("end", int),
                                       ("ended", bool)])

def _closed_boxes(text: str) -> list[tuple[int, int]]:
    """(content start, closing brace index) of every closed outermost \\boxed{...}, in one pass."""
    depth = 0
    open_at = []   # (content start, depth at which the box closes) of each open \boxed{
    boxes = []
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
    """The answer line (the rule above): the answer, where the line starts and ends (its newline
    included), whether a newline closed it; None if the completion commits to nothing."""
    boxes = _closed_boxes(text)
    next_box = 0   # the first box not yet read
    start = 0      # the current line's start
    while start <= len(text):
        nl = text.find("\n", start)
        end = len(text) if nl == -1 else nl
        j = next_box
        while j < len(boxes) and boxes[j][1] < end:    # boxes that close on this line
            j += 1
        answer = " ".join(text[lo:hi].strip() for lo, hi in boxes[next_box:j])
        next_box = j
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

def _clean_answer(s: str) -> str:
    return s.replace("$", "").replace("*", "").strip().removesuffix(".").strip()

def answers_match(pred: str, gold: str) -> bool:
    """A numeric gold by value against the one number in pred; any other as a cleaned string."""
    g = gold.strip().replace("$", "").replace(",", "").rstrip(".")
    if _NUMBER.fullmatch(g):  # exactly one value in pred (repeats allowed), equal to the gold's
        values = {Decimal(m.group().replace(",", "")) for m in _NUMBER.finditer(pred)}
        return values == {Decimal(g)}
    return _clean_answer(pred) == _clean_answer(gold)

def is_correct(completion: str, gold: str) -> bool:
    pred = extract_answer(completion)
    return pred is not None and answers_match(pred, gold)

# Steps: the lines before the answer line. Step counts are easy to hack: the trainer logs them.

def split_steps(completion: str) -> list[str]:
    found = find_answer(completion)
    body = completion if found is None else completion[:found.start]
    return [line.strip() for line in body.split("\n") if line.strip()]

# --------------------------------------------------------------------------------------------------
# Toy PRM (frozen), a quantile-regression PRM's interface: a step is false if an equation in it is,
# true if one is true, else unjudged (NaN); p(sound) ~ Beta(1 + e, 1) if true, Beta(1, 1 + e) if
# false, read at quantiles tau. Its blind spot is a real PRM's too: a miscopied number is sound.

MAX_EXPR = 120    # characters of arithmetic before "="
MAX_DIGITS = 15   # digits of one number
_EXPR_CHARS = frozenset("0123456789.,+-–−*/×x÷()$ ")  # with the en dash and minus sign
_RHS = re.compile(rf"\s*\$?\s*(-?[0-9][0-9,]{{0,{2 * MAX_DIGITS}}}"
                  rf"(?:\.[0-9]{{1,{MAX_DIGITS}}})?)(?![0-9])")
_RHS_GOES_ON = re.compile(r"[A-Za-z]*\s*[-–−+*/×÷%^(]|\s+[0-9]")
_TIMES = re.compile(r"(?<=[0-9)])\s*[x×]\s*(?=[0-9(])")    # "3 x 4", "3x4"; "3x + 4" is algebra
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_TOO_LONG_NUMBER = re.compile(rf"[0-9]{{{MAX_DIGITS + 1}}}")
_ANNOTATION = re.compile(rf"<<([^<>=]{{1,{MAX_EXPR}}})=([^<>=]{{1,{2 * MAX_DIGITS}}})>>")
_BIN_OPS = {ast.Add: operator.add, ast.Sub: operator.sub,
            ast.Mult: operator.mul, ast.Div: operator.truediv}
_UN_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}

def _walk(node) -> float | None:  # the value of a tree of numbers and + - * / ( ), else None
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UN_OPS:
        v = _walk(node.operand)
        return None if v is None else _UN_OPS[type(node.op)](v)
    if not (isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS):
        return None
    left = _walk(node.left)
    right = _walk(node.right)
    if left is None or right is None:
        return None
    return _BIN_OPS[type(node.op)](left, right)

def safe_eval(expr: str, need_op: bool = False) -> float | None:
    """+ - * / ( ) over numbers, else None (x/0, inf, too long): ast.parse, never eval()."""
    expr = _TIMES.sub("*", _THOUSANDS.sub("", expr))
    expr = expr.replace("$", "").replace("÷", "/").replace("–", "-").replace("−", "-").strip()
    if not expr or len(expr) > MAX_EXPR or _TOO_LONG_NUMBER.search(expr):
        return None
    try:
        tree = ast.parse(expr, mode="eval").body
        value = _walk(tree) if isinstance(tree, ast.BinOp) or not need_op else None
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError, ZeroDivisionError):
        return None
    return value if value is not None and math.isfinite(value) else None

def _lhs_before(text: str, eq: int) -> str | None:
    """The arithmetic run that ends at text[eq] == "=", or None (too long, or starts mid-word)."""
    i = eq
    while i > 0 and text[i - 1] in _EXPR_CHARS and (text[i - 1] != "." or text[i].isdigit()):
        i -= 1
        if eq - i > MAX_EXPR:
            return None
    comma = text.rfind(", ", i, eq)                   # "2, 3 + 4 = 7": a list, then an equation
    if comma != -1:
        i = comma + 1
    m = re.match(r"[ $]*([0-9(]|-(?=[0-9(]))", text[i:eq])  # spaces or $, then a number, sign, (
    if m is None:
        return None                                   # "9 hours * 2/3 = 6": the left side is words
    start = i + m.start(1)
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] == "."):
        return None                                   # "1e999 + 1", "v2 + 3": not a clean start
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
    values = [(safe_eval(lhs, need_op=True), safe_eval(rhs)) for lhs, rhs in pairs]
    verdicts = [math.isclose(left, right, rel_tol=1e-6, abs_tol=1e-6) for left, right in values
                if left is not None and right is not None]   # not checkable: no evidence either way
    return sum(verdicts), len(verdicts) - sum(verdicts)

class ToyPRM:
    """Every PRM has taus, default_tau and score_batch(questions, steps) -> [(S, Q) quantiles]."""
    taus = (0.1, 0.5, 0.9)
    default_tau = None  # read at the lowest quantile unless --prm-quantile says otherwise
    q_index = 0         # the column a run reads (build_prm sets it)
    EVIDENCE = 4.0      # pseudo-counts a step's verdict adds to the uniform Beta(1, 1) prior

    def score(self, question: str, steps: list[str]) -> torch.Tensor:
        a = 1 + self.EVIDENCE
        true_step = [t ** (1 / a) for t in self.taus]              # Beta(a, 1): cdf x^a
        false_step = [1 - (1 - t) ** (1 / a) for t in self.taus]   # Beta(1, a): cdf 1 - (1 - x)^a
        unjudged = [math.nan] * len(self.taus)
        rows = [false_step if n_false else true_step if n_true else unjudged  # false wins
                for n_true, n_false in map(check_equations, steps)]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(steps), len(self.taus))  # (S, Q)

    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        return [self.score(q, s) for q, s in zip(questions, steps)]

# --------------------------------------------------------------------------------------------------
# Models from a folder or the hub: the policy, and learned PRMs, by the same loader.

def check_source(flag: str, name: str) -> None:
    """A hub id, or a folder with config.json and tokenizer files: else one line, before loading."""
    path = Path(name)
    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith(".")
    folder = path.is_dir()
    problems = [(path.is_file(), "a file"),
                (not path.exists() and not hub_id, "no such folder"),
                (folder and not (path / "config.json").is_file(), "no config.json in this folder"),
                (folder and not any(path.glob("tokenizer*")), "no tokenizer files in this folder")]
    problem = next((text for found, text in problems if found), None)
    if problem is not None:
        raise ProgrsError(f"{flag} {name}: {problem} (expected a hub id or a saved model's folder: "
                          "config.json, weights and tokenizer files)")

def from_pretrained(flag: str, name: str, auto_class):
    """(config, tokenizer, model, loading info); any failure is one line naming flag and folder."""
    import transformers as tf
    check_source(flag, name)
    try:  # fp32 master weights even for bf16 runs: bf16 weights would round away lr ~1e-6 updates
        config = tf.AutoConfig.from_pretrained(name)
        tokenizer = tf.AutoTokenizer.from_pretrained(name)
        model_class = auto_class(config)
        model, info = model_class.from_pretrained(name, dtype=torch.float32,
                                                  output_loading_info=True)
    except Exception as e:  # whatever the library raises: no network, truncated weights, a head
        raise ProgrsError(f"{flag} {name}: could not load it ({first_line(e)})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer, model, info

def is_causal_lm(config) -> bool:
    return any(a.endswith("ForCausalLM") for a in config.architectures or [])

# --------------------------------------------------------------------------------------------------
# Learned PRMs (frozen): --prm FOLDER or a hub id, each step read at its last token: a token
# classifier's quantile head (labels q0.1, q0.5, ...) or two-class head (p(good)); or a causal LM at
# a step tag, p(good) / (p(good) + p(bad)) (its config's progrs_step_tag, else Math-Shepherd's).

_TAU_LABEL = re.compile(r"q_?(0?\.[0-9]+)")
_GOOD_LABEL = re.compile(r"good|pos(itive)?|\+|correct|true|1", re.IGNORECASE)  # a whole label

def prm_inputs(tokenizer, question: str, steps: list[str], tag: str | None = None):
    """(ids, index of each step's last token); pieces are tokenised alone, so the ends are exact."""
    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tok(build_prompt(question))
    ends = []
    for step in steps:
        ids = ids + tok(f"{step} {tag}" if tag else step + "\n")
        ends.append(len(ids) - 1)
        if tag:
            ids = ids + tok("\n")
    return ids, ends

def quantiles_from_logits(z: torch.Tensor) -> torch.Tensor:
    """(..., Q) raw head outputs -> (..., Q) quantiles in (0, 1), strictly increasing along Q."""
    steps = torch.cat([z[..., :1], torch.nn.functional.softplus(z[..., 1:])], -1)
    return torch.sigmoid(steps.float().cumsum(-1))

class ModelPRM:
    def __init__(self, name: str, device, amp, tag=None, tokens=None, batch_size: int = 64):
        import transformers as tf

        def auto_class(config):
            causal = bool(tag) or is_causal_lm(config)
            return tf.AutoModelForCausalLM if causal else tf.AutoModelForTokenClassification
        config, self.tokenizer, self.model, info = from_pretrained("--prm", name, auto_class)
        self.causal = auto_class(config) is tf.AutoModelForCausalLM
        self.default_tau = getattr(config, "progrs_quantile", None)
        labels = [str(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        taus = [_TAU_LABEL.fullmatch(x) for x in labels]
        base = self.model.base_model
        body = {n for n, _ in base.named_parameters(prefix=self.model.base_model_prefix)}
        self.tag = (tag or getattr(config, "progrs_step_tag", "ки")) if self.causal else None
        if self.causal:  # the arguments win over the config, the config over Math-Shepherd's
            pair = tokens.split(",") if tokens else getattr(config, "progrs_step_tokens", "+-")
            ids = [self.tokenizer.encode(w, add_special_tokens=False) for w in [self.tag, *pair]]
            if len(ids) != 3 or any(len(i) != 1 for i in ids):
                raise ProgrsError(f"--prm {name}: step tag and tokens {[self.tag, *pair]} must "
                                  "each be one token of its tokenizer (Math-Shepherd's ки, +, -)")
            self.kind = "step-tag"
            self.taus = (0.5,)
            self.good_bad = [ids[1][0], ids[2][0]]
        elif set(info["missing_keys"]) - body:  # from_pretrained would make up a random head
            missing = ", ".join(sorted(info["missing_keys"]))
            raise ProgrsError(f"--prm {name}: this checkpoint has no classification head "
                              f"({missing} missing); expected a trained PRM")
        elif all(taus):
            self.kind = "quantile"
            self.taus = tuple(float(m[1]) for m in taus)
            if list(self.taus) != sorted(set(self.taus)):
                raise ProgrsError(f"--prm {name}: quantile labels {labels} are not increasing taus")
        elif len(labels) == 2:
            self.kind = "two-class"
            self.taus = (0.5,)
            good = [i for i, x in enumerate(labels)
                    if _GOOD_LABEL.fullmatch(x.replace("LABEL_", ""))]
            self.good = good[-1] if good else 1
        else:
            raise ProgrsError(f"--prm {name}: expected a quantile head (labels q0.1, q0.5, ...) "
                              f"or a two-class head, got {len(labels)} outputs {labels[:6]}")
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.amp = amp
        self.batch_size = batch_size
        self.max_len = min(getattr(self.model.config, "max_position_embeddings", 0) or 4096, 4096)
        self.q_index = quantile_index(self)  # the column a run reads (build_prm sets it)

    def read(self, z: torch.Tensor) -> torch.Tensor:  # (S, K) head outputs -> (S, Q) quantiles
        if self.kind == "step-tag":
            return z[:, self.good_bad].softmax(-1)[:, :1]
        if self.kind == "two-class":
            return z.softmax(-1)[:, [self.good]]
        return quantiles_from_logits(z)

    @torch.no_grad()
    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        """Each distinct (question, steps) once (groups repeat completions), right-padded."""
        keys = [(q, tuple(s)) for q, s in zip(questions, steps)]
        unique = list(dict.fromkeys(keys))
        items = [prm_inputs(self.tokenizer, q, list(s), self.tag) for q, s in unique]
        items = [(ids[:self.max_len], ends) for ids, ends in items]  # steps cut off: no opinion
        out = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            rows = [{"input_ids": x} for x, _ in chunk]
            enc = self.tokenizer.pad(rows, padding_side="right", return_tensors="pt")  # (b, L)
            net = self.model.base_model if self.causal else self.model
            with self.amp():  # a causal LM's vocabulary head runs only at the steps' ends
                h = net(**enc.to(self.device))
            h = h.last_hidden_state if self.causal else h.logits                        # (b, L, .)
            for row, (_, ends) in enumerate(chunk):
                at = h[row, [e for e in ends if e < self.max_len]]                      # (S', .)
                z = self.model.get_output_embeddings()(at) if self.causal else at
                q = self.read(z.float().cpu())                                          # (S', Q)
                cut = torch.full((len(ends) - len(q), q.shape[1]), math.nan)
                out.append(torch.cat([q, cut]))                                         # (S, Q)
        scored = dict(zip(unique, out))
        return [scored[k] for k in keys]

# --------------------------------------------------------------------------------------------------
# Loss and update. Log-probs: fp32 logits / T, position ids rebuilt from the mask as generate()
# builds them. Divided by N, the completion tokens of the *whole batch* (micro-batching changes
# memory, never the gradient):
#     L = -(1/N) sum_i sum_t min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) [+ kl_coef * k3_it]
# With --ppo-epochs 1, rho = 1 and the clip never acts: REINFORCE with group baselines. The logged
# loss, -(1/N) sum_i A_i len_i, is length-weighted and no progress signal (one 5-token right
# rollout, seven 10-token wrong ones, b = 0: +0.18). Watch accuracy.

PPO_CLIP = 0.2
LOGIT_BLOCK = 2 ** 26  # positions x vocabulary per block of fp32 logits: 256 MB, ~440 at 151,936

def _head_logprobs(hidden, targets, weight, bias, temperature: float):
    """(N, H) final hidden states, (N,) targets -> (N,) log-probs, (N,) entropies."""
    logits = hidden.float() @ weight.float().T                                   # (N, V) fp32
    logits = (logits if bias is None else logits + bias.float()) / temperature
    log_z = logits.logsumexp(-1)                                                 # (N,)
    with torch.no_grad():  # a metric: the policy's entropy at the sampling temperature
        entropy = log_z - (logits.softmax(-1) * logits).sum(-1)                  # (N,)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - log_z, entropy     # (N,), (N,)

def token_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float, amp,
                   entropy: bool = False):
    """(B, Tp + T) -> (B, T) log pi(y_t | y_<t) (and (B, T) entropies if asked). The body runs under
    `amp`; the head in fp32, in blocks of LOGIT_BLOCK logits recomputed in the backward pass, so
    (B, T, V) logits never exist at once."""
    B, T = input_ids.shape[0], input_ids.shape[1] - prompt_len
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                  # (B, Tp + T)
    with amp():
        body = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=position_ids, use_cache=False)
    hidden = body.last_hidden_state[:, prompt_len - 1:-1].reshape(B * T, -1)  # (B*T, H): for y_t
    targets = input_ids[:, prompt_len:].reshape(B * T)                           # (B*T,)
    head = model.get_output_embeddings()
    rows = max(1, LOGIT_BLOCK // head.weight.shape[0])
    out = []   # (log-probs, entropies) of each block
    for i in range(0, B * T, rows):
        block = (hidden[i:i + rows], targets[i:i + rows], head.weight, head.bias, temperature)
        if torch.is_grad_enabled():  # keep only the block's inputs; recompute its logits backward
            checkpointed = torch.utils.checkpoint.checkpoint
            out.append(checkpointed(_head_logprobs, *block, use_reentrant=False))
        else:
            out.append(_head_logprobs(*block))
    logp = torch.cat([x[0] for x in out]).view(B, T)                             # (B, T)
    if entropy:
        return logp, torch.cat([x[1] for x in out]).view(B, T)
    return logp

def policy_loss(logp, old_logp, adv, mask, n_tokens, ref_logp=None, kl_coef=0.0):
    """Clipped policy-gradient (+ optional k3 KL) loss of one micro-batch, over the batch's N."""
    ratio = torch.exp(logp - old_logp)                                           # (b, T)
    a = adv[:, None]                                                             # (b, 1)
    per_token = -torch.min(ratio * a, ratio.clamp(1 - PPO_CLIP, 1 + PPO_CLIP) * a)
    if ref_logp is None:
        return (per_token * mask).sum() / n_tokens, None
    kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1                    # (b, T), >= 0
    per_token = per_token + kl_coef * kl
    return (per_token * mask).sum() / n_tokens, (kl * mask).sum() / n_tokens

def update_policy(model, optimizer, batch, adv, args, amp, ref_model=None) -> dict:
    """--ppo-epochs optimizer steps on one batch; the first epoch's loss, kl, grad_norm, entropy."""
    mask = batch["completion_mask"].float()                                      # (B, T)
    adv = adv.to(mask.device)                                                    # (B,)
    n_tokens = mask.sum().clamp(min=1)
    Tp = batch["prompt_len"]
    slices = [slice(i, i + args.micro_batch) for i in range(0, mask.shape[0], args.micro_batch)]
    old, ref = {}, {}  # micro-batch -> log-probs before the update, and the reference's
    stats = None
    model.train()
    for epoch in range(args.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = kl_sum = entropy_sum = 0.0
        for i, s in enumerate(slices):
            ids, att = batch["input_ids"][s], batch["attention_mask"][s]         # (b, Tp + T) each
            logp, entropy = token_logprobs(model, ids, att, Tp, args.temperature, amp, entropy=True)
            if epoch == 0:
                old[i] = logp.detach()  # the same forward path as the update: rho starts at 1
                if ref_model is not None:
                    with torch.no_grad():
                        ref[i] = token_logprobs(ref_model, ids, att, Tp, args.temperature, amp)
            loss, kl = policy_loss(logp, old[i], adv[s], mask[s], n_tokens, ref.get(i),
                                   args.kl_coef)
            loss.backward()
            loss_sum += loss.item()
            kl_sum += 0.0 if kl is None else kl.item()
            entropy_sum += float((entropy * mask[s]).sum() / n_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if not torch.isfinite(grad_norm):  # stop before the step writes NaN into the weights
            raise ProgrsError(f"non-finite gradient norm at ppo epoch {epoch}; lower --lr")
        optimizer.step()
        first = dict(loss=loss_sum, kl=kl_sum, grad_norm=float(grad_norm), entropy=entropy_sum)
        stats = stats or first
    model.eval()
    return stats

# --------------------------------------------------------------------------------------------------
# Training loop. Each step: P prompts -> G rollouts each -> r, PRM scores -> b -> c -> A -> update.

def score_completions(problems: list[dict], texts: list[str], prm, q_index: int, lam_var: float):
    """Verify, and PRM-score at column q_index, one completion per problem (text the verifier
    cannot read: wrong, no steps, counted in `unscorable`)."""
    keys = "correct b step_scores n_steps trace_error unscorable judged".split()
    out = {name: [] for name in keys}
    steps = []
    for prob, text in zip(problems, texts):
        try:
            s = split_steps(text)
            ok = is_correct(text, prob["gold"])
            # a right answer reached through a false equation (the verifier cannot see it)
            trace_error = ok and any(check_equations(x)[1] > 0 for x in s)
            verdict = dict(correct=ok, trace_error=trace_error, unscorable=False, n_steps=len(s))
        except Exception:
            s = []
            verdict = dict(correct=False, trace_error=False, unscorable=True, n_steps=0)
        for key, value in verdict.items():
            out[key].append(value)
        steps.append(s)
    for q in prm.score_batch([p["question"] for p in problems], steps):           # [(S_i, Q)]
        column = q[:, q_index]                                                    # (S_i,)
        out["step_scores"].append(column.tolist())
        out["judged"].append(bool((~column.isnan()).any()))
        out["b"].append(coherence_score(column, lam_var=lam_var))
    return out

def rollout_step(model, tokenizer, problems: list[dict], args, prm, amp) -> dict:
    """Sample G completions per problem, verify, score, and compute A: the batch of one update."""
    P, G = len(problems), args.group_size
    t0 = time.perf_counter()
    prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in problems]
    batch = generate(model, tokenizer, prompts, G, args.max_new_tokens, args.temperature, amp,
                     args.chat)
    t1 = time.perf_counter()
    per_rollout = [p for p in problems for _ in range(G)]                        # prompt-major
    scored = score_completions(per_rollout, batch["texts"], prm, prm.q_index, args.lam_var)
    correct = torch.tensor(scored["correct"]).view(P, G)                         # (P, G)
    b = torch.tensor(scored["b"], dtype=torch.float32).view(P, G)                # (P, G)
    adv, a_out, c = compute_advantages(correct, b, args.mode, args.lam)          # (P, G) each
    batch.update(scored, correct=correct, b_grid=b, adv=adv, a_out=a_out, c=c,
                 t_generate=t1 - t0, t_score=time.perf_counter() - t1)
    return batch

def rollout_metrics(scored: dict, fluent) -> dict:  # trace errors: a share of the right answers
    n_right = sum(scored["correct"])
    return dict(accuracy=n_right / len(scored["correct"]),
                process_score=float(np.mean(scored["b"])),
                trace_error_rate=sum(scored["trace_error"]) / max(n_right, 1),
                steps_per_answer=float(np.mean(scored["n_steps"])),
                fluent_failure_rate=None if fluent is None else float(fluent.float().mean()))

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): the chance that k of n samples, c of them right, hold a
    right one, 1 - C(n - c, k) / C(n, k); integer binomials: exactly 0 if c = 0, 1 if n - c < k."""
    return 1 - math.comb(n - c, k) / math.comb(n, k)

@torch.no_grad()
def evaluate(model, tokenizer, problems: list[dict], args, prm, amp, right_pool=()) -> dict:
    """Greedy pass@1, trace errors, steps, b and fluent failures; the same, and pass@k, over K =
    --eval-samples samples a problem at the training temperature (sampled pass@1: RL's target)."""
    def summary(n, temperature, prefix):  # the problems' completions, n per problem, problem-major
        chunk = max(1, args.eval_batch // n)
        texts = []
        for i in range(0, len(problems), chunk):
            part = problems[i:i + chunk]
            prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in part]
            out = generate(model, tokenizer, prompts, n, args.max_new_tokens, temperature, amp,
                           args.chat)
            texts += out["texts"]
        s = score_completions([p for p in problems for _ in range(n)], texts, prm, prm.q_index,
                              args.lam_var)
        ff = fluent_failures(torch.tensor(s["b"]), torch.tensor(s["correct"]),
                             torch.tensor(s["judged"]), right_pool)
        out = {prefix + key: v for key, v in rollout_metrics(s, ff).items()}
        right = np.reshape(s["correct"], (len(problems), n)).sum(-1)              # (problems,)
        for k in (2 ** i for i in range(1, n.bit_length())):  # k = 2, 4, 8, ... <= n
            out[f"{prefix}pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in right]))
        return out

    out = summary(1, 0.0, "eval_")
    if args.eval_samples > 0:  # its own seeded stream: evaluations leave training's stream alone
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(args.seed)
            out.update(summary(args.eval_samples, args.temperature, "eval_sampled_"))
    return out

def _mean(x: torch.Tensor) -> float | None:
    return float(x.mean()) if x.numel() else None  # None (null): e.g. no right rollout this step

def step_metrics(batch: dict, args, right_pool=None) -> dict:
    """One metrics line; marks batch["fluent"] (P, G), adds the step's right b's to right_pool."""
    correct, b, c, adv = (batch[key] for key in ("correct", "b_grid", "c", "adv"))  # (P, G) each
    judged = torch.tensor(batch["judged"])                                       # (P*G,)
    ff = fluent_failures(b.flatten(), correct.flatten(), judged, right_pool or ())
    fluent = torch.zeros_like(correct) if ff is None else ff.view_as(correct)    # (P, G)
    batch["fluent"] = fluent
    n_right = correct.sum(-1)                                                    # (P,)
    push = torch.where((n_right == 0)[:, None], adv.clamp(min=0), 0.0)  # (P, G): all-wrong A > 0
    push_to_fluent = float(push[fluent].sum() / push.sum()) if push.sum() > 0 else None
    if right_pool is not None:
        right_pool.extend(b[correct].tolist())
    rates = rollout_metrics(dict(batch, correct=correct.flatten().tolist()), ff)
    rates["process_score"] = _mean(b)  # the mean of the float32 b's the advantages used
    return dict(
        train_accuracy=rates.pop("accuracy"), **rates,
        process_score_correct=_mean(b[correct]), process_score_incorrect=_mean(b[~correct]),
        bonus_correct=_mean(c[correct]), bonus_incorrect_abs=_mean(c[~correct].abs()),
        groups_all_correct=int((n_right == args.group_size).sum()),
        groups_all_wrong=int((n_right == 0).sum()),
        dominance_violations=dominance_violations(adv, correct),
        completion_tokens=float(batch["completion_mask"].sum(-1).float().mean()),
        truncated=int(batch["truncated"].sum()), unscorable=int(sum(batch["unscorable"])),
        all_wrong_push_to_fluent=push_to_fluent)

def teaching_view(batch: dict, problems: list[dict], width: int = 60) -> str:
    """One rollout group as a table: the most mixed group of the batch (most right-wrong pairs)."""
    correct = batch["correct"]                                                   # (P, G)
    fluent = batch.get("fluent", torch.zeros_like(correct))                      # (P, G)
    n_right, G = correct.sum(-1), correct.shape[1]                               # (P,), int
    i = int((n_right * (G - n_right)).argmax())
    lines = [f"question: {problems[i]['question'][:200]}   gold: {problems[i]['gold']}",
             f"{'ok':>3} {'step scores':<29} {'b':>5} {'c':>6} {'A_out':>6} {'A':>6}  completion"]
    for j in range(G):
        row = i * G + j
        scores = batch["step_scores"][row][:6]
        steps = " ".join("  - " if math.isnan(s) else f"{s:.2f}" for s in scores)
        text = batch["texts"][row].strip().replace("\n", " | ")
        text = text if len(text) <= width else text[:width - 3] + "..."
        ok = "yes" if correct[i, j] else ("no*" if fluent[i, j] else "no")
        lines.append(f"{ok:>3} {steps:<29} {batch['b_grid'][i, j]:5.2f} {batch['c'][i, j]:+6.2f} "
                     f"{batch['a_out'][i, j]:+6.2f} {batch['adv'][i, j]:+6.2f}  {text}")
    if fluent[i].any():
        lines.append("no* = fluent failure: wrong, yet b reaches the median b of recent right "
                     "rollouts")
    return "\n".join(lines)

def train(model, tokenizer, train_set, eval_set, args, amp, prm, state=None, ref_model=None,
          log=print):
    """The run, or its rest from a checkpoint's state, into a prepared --out: {before, after}."""
    out_dir = Path(args.out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    n_warm = args.warmup_steps + 1  # linear: Adam's first steps move each weight by ~lr regardless
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / n_warm))
    if args.kl_coef > 0 and ref_model is None:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    order_rng = random.Random(args.seed)   # the training problems: epochs of shuffles
    state = state or dict(step=0, queue=[], right_pool=[], metrics="")
    queue = list(state["queue"])           # problem indices still to come in this epoch
    right_pool = collections.deque(state["right_pool"], maxlen=FLUENT_POOL)
    if state["step"] > 0:                  # resumed: the optimizer and every random stream as saved
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        order_rng.setstate(state["order_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():  # a CUDA run may resume on a CPU
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def next_problems():
        while len(queue) < args.prompts_per_step:
            queue.extend(order_rng.sample(range(len(train_set)), len(train_set)))
        picked = [train_set[i] for i in queue[:args.prompts_per_step]]
        del queue[:args.prompts_per_step]
        return picked

    def run_eval(step, metrics_file):
        t0 = time.perf_counter()
        ev = evaluate(model, tokenizer, eval_set, args, prm, amp, right_pool)
        rec = dict(ev, step=step, t_eval=time.perf_counter() - t0)
        print(json.dumps(rec), file=metrics_file, flush=True)
        sampled = f"{ev.get('eval_sampled_accuracy', 0):.1%} ({args.eval_samples}/problem)"
        log(f"step {step}: greedy pass@1 {ev['eval_accuracy']:.1%} on {len(eval_set)} problems"
            f"{', sampled pass@1 ' + sampled if args.eval_samples else ''}, trace errors "
            f"{ev['eval_trace_error_rate']:.1%} of right answers, "
            f"{ev['eval_steps_per_answer']:.2f} steps/answer")
        return ev

    def save(step):
        metrics_file.flush()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        state = dict(step=step, optimizer=optimizer.state_dict(), schedule=schedule.state_dict(),
                     order_rng=order_rng.getstate(), queue=queue, right_pool=list(right_pool),
                     metrics=(out_dir / "metrics.jsonl").read_text(),
                     torch_rng=torch.get_rng_state(), cuda_rng=cuda_rng)
        save_checkpoint(model, tokenizer, out_dir, step, state)

    with open(out_dir / "metrics.jsonl", "w") as metrics_file:
        metrics_file.write(state["metrics"])    # what a resumed run had written by its checkpoint
        lines = state["metrics"].splitlines()
        evals = [json.loads(line) for line in lines if "eval_accuracy" in line]
        if state["step"] == 0:
            evals.append(run_eval(0, metrics_file))
            view = [train_set[0]]  # no batch before the first update: sample one group to show
            log(teaching_view(rollout_step(model, tokenizer, view, args, prm, amp), view))
        else:
            log(f"resumed {args.out} after step {state['step']} of {args.steps}")
        for step in range(state["step"] + 1, args.steps + 1):
            problems = next_problems()
            batch = rollout_step(model, tokenizer, problems, args, prm, amp)
            t0 = time.perf_counter()
            adv = batch["adv"].flatten()                                         # (P*G,)
            upd = update_policy(model, optimizer, batch, adv, args, amp, ref_model)
            schedule.step()
            if ref_model is None:
                del upd["kl"]
            rec = dict(step=step, **step_metrics(batch, args, right_pool), **upd,
                       t_generate=batch["t_generate"], t_score=batch["t_score"],
                       t_update=time.perf_counter() - t0)
            print(json.dumps(rec), file=metrics_file, flush=True)
            log(f"step {step}: train accuracy {rec['train_accuracy']:.2f}, b "
                f"{rec['process_score']:.2f}, fluent failures {rec['fluent_failure_rate'] or 0:.2f}"
                f", entropy {rec['entropy']:.3f}")
            if step % args.eval_every == 0 or step == args.steps:
                evals.append(run_eval(step, metrics_file))
                log(teaching_view(batch, problems))
            if step % args.save_every == 0 or step == args.steps:
                save(step)
    before, last = evals[0], evals[-1]
    for key, name in (("eval_sampled_accuracy", "sampled"), ("eval_accuracy", "greedy")):
        if key in last:
            gain = 100 * (last[key] - before[key])
            log(f"{name} pass@1: {before[key]:.1%} -> {last[key]:.1%} ({gain:+.1f} points), "
                f"{len(eval_set)} problems, {args.steps} steps, mode {args.mode}, lam {args.lam}")
    return dict(before=before, after=last)

# --------------------------------------------------------------------------------------------------
# The run folder, --out: metrics.jsonl, config.json and model/ (weights, tokenizer, progrs_state.pt
# for --resume), written in model.tmp/, swapped in by two renames: one whole checkpoint at any time.

CHECKPOINT_DIRS = ("model.tmp", "model", "model.old")  # being written, the last one, the previous
STATE_KEYS = ("step", "optimizer", "schedule", "order_rng", "queue", "right_pool", "metrics",
              "torch_rng", "cuda_rng")

def save_checkpoint(model, tokenizer, out_dir: Path, step: int, state: dict) -> None:
    tmp, final, old = (out_dir / d for d in CHECKPOINT_DIRS)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / "progrs_state.pt")
        (tmp / "progrs_step.json").write_text(json.dumps({"step": step}))
    except Exception as e:  # a full disk: OSError, or safetensors' and torch's own errors
        shutil.rmtree(tmp, ignore_errors=True)
        raise ProgrsError(f"--out {out_dir}: could not write the step {step} checkpoint "
                          f"({first_line(e)}); model/ still holds the last whole one") from None
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)

def prepare_out(out: str, resume: bool = False, log=print) -> None:
    """Before any model loads: --out is writable and fresh (or holds a checkpoint to --resume)."""
    if not out.strip():
        raise ProgrsError("--out: expected a folder, got an empty name")
    out_dir = Path(out)
    tmp, final, old = (out_dir / d for d in CHECKPOINT_DIRS)
    used = [p.name for p in (out_dir / "metrics.jsonl", final, tmp, old) if p.exists()]
    if used and not resume:
        raise ProgrsError(f"--out {out}: holds a run ({', '.join(used)}); pass --resume to "
                          "continue it, or another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise ProgrsError(f"--out {out}: cannot write there ({first_line(e)})") from None
    if old.is_dir() and not final.exists():  # killed between the renames: old is the last whole one
        old.rename(final)
        log(f"{out}: restored model/ from model.old/, left by an interrupted checkpoint save")
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
            log(f"{out}: removed {d.name}/, left by an interrupted checkpoint save")
    if resume and not (final / "progrs_state.pt").is_file():
        raise ProgrsError(f"--resume: {out} holds no checkpoint to continue "
                          "(model/progrs_state.pt)")

def resume_state(args) -> dict:
    """--resume: check the flags against OUT/config.json; return the checkpoint's state."""
    config = Path(args.out) / "config.json"
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ProgrsError(f"--resume: cannot read {config} ({first_line(e)}); it holds the run's "
                          "flags, written when the run started") from None
    if not isinstance(saved, dict):
        raise ProgrsError(f"--resume: {config} holds no flags (expected a JSON object, as "
                          "progrs.py writes)")
    for _, flag, *_ in FLAGS:
        value = getattr(args, attr(flag))
        was = saved.get(attr(flag))
        if flag not in RESUME_MAY_CHANGE and value != was:
            raise ProgrsError(f"--resume: {flag} {value} differs from the run's {was} ({config}); "
                              "rerun its command, or another --out")
    path = Path(args.out) / "model" / "progrs_state.pt"
    try:  # on the CPU: --device may change, and load_state_dict moves the optimizer's tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise ProgrsError(f"--resume: cannot read {path} ({first_line(e)}); the checkpoint is "
                          "damaged") from None
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ProgrsError(f"--resume: {path} lacks {', '.join(missing)} (expected the state "
                          "progrs.py saves)")
    if state["step"] >= args.steps:
        raise ProgrsError(f"--resume: the run in {args.out} has done {state['step']} of its "
                          f"{args.steps} steps; pass a larger --steps to go on")
    return state

# --------------------------------------------------------------------------------------------------
# Main: flags -> defaults, device and --out -> data -> model -> PRM -> train

def pick_device(args) -> tuple[torch.device, bool]:
    """(device, bf16 autocast) from --device and --dtype; one line if the device is not here."""
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    name = auto if args.device == "auto" else args.device
    with contextlib.suppress(RuntimeError):  # a name torch cannot read
        device = torch.device(name)
        cuda_here = device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()
        if device.type == "cpu" or cuda_here:
            return device, args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    raise ProgrsError(f"--device {args.device}: not available on this machine (expected auto, cpu, "
                      f"or cuda:N with N < {torch.cuda.device_count()}, the CUDA devices here)")

def load_model(name: str, device: torch.device, flag: str = "--model"):
    from transformers import AutoModelForCausalLM
    config, tokenizer, model, _ = from_pretrained(flag, name, lambda config: AutoModelForCausalLM)
    if config.architectures and not is_causal_lm(config):  # it loaded with a made-up LM head
        raise ProgrsError(f"{flag} {name}: a {config.architectures[0]}, expected a causal LM "
                          "(an architecture ending in ForCausalLM)")
    tokenizer.padding_side = "left"  # generation appends on the right
    model.to(device).eval()
    with torch.no_grad():  # token_logprobs reads the head as a linear map of the last hidden state
        ids = torch.tensor([[0, 1, 2]], device=device)
        logits = model(input_ids=ids).logits.float()                             # (1, 3, V)
        ref = logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])        # (2, 1)
        ours = token_logprobs(model, ids, torch.ones_like(ids), 1, 1.0, contextlib.nullcontext)
    if not torch.allclose(ours.flatten(), ref.flatten(), atol=1e-3):
        raise ProgrsError(f"{flag} {name}: its logits are not a linear head on the last hidden "
                          "state")
    return model, tokenizer

def quantile_index(prm, tau: float | None = None) -> int:
    """The PRM column a run reads: --prm-quantile, else the config's progrs_quantile, else 0."""
    if tau is None:
        tau = prm.default_tau if prm.default_tau is not None else prm.taus[0]
    if tau not in prm.taus:
        raise ProgrsError(f"--prm-quantile: expected one of this PRM's taus {prm.taus}, got {tau}")
    return prm.taus.index(tau)

def build_prm(args, device, amp):
    """--prm toy -> ToyPRM, else ModelPRM, with prm.q_index the column this run reads."""
    prm = ToyPRM() if args.prm == "toy" else ModelPRM(args.prm, device, amp)
    prm.q_index = quantile_index(prm, args.prm_quantile)
    return prm

def main(argv=None) -> dict:
    from transformers.utils import logging as hf_logging
    args = build_parser().parse_args(argv)
    check_args(args)
    hf_logging.set_verbosity_error()     # errors here are ours, one line each; no loading reports
    hf_logging.disable_progress_bar()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # nor offline retries' warnings
    device, bf16 = pick_device(args)
    prepare_out(args.out, args.resume)
    size = apply_defaults(args)
    state = resume_state(args) if args.resume else None
    check_source("--model", args.model)  # a typo fails here, not after a download
    train_set = load_data(args.data, "train", "--data")
    eval_set = load_data(args.eval_data, "test", "--eval-data")[:args.eval_size or None]
    model, tokenizer = load_model(str(Path(args.out) / "model") if state else args.model, device)
    ref_model = None  # a resumed run's KL is to the initial model, not the checkpoint
    if state and args.kl_coef:
        ref_model = load_model(args.model, device)[0].requires_grad_(False)
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    prm = build_prm(args, device, amp)
    why = "in tiny_task/" if size == "tiny" else "not in tiny_task/"
    why = f"--defaults {size}" if args.defaults != "auto" else why
    sampled = f", sampled pass@1, 2, 4, ... <= {args.eval_samples}" if args.eval_samples else ""
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model {args.model}: {n_params:.2f}M parameters, {device}{' (bf16 autocast)' * bf16}; "
          f"{size} defaults ({why}); {len(train_set)} train / {len(eval_set)} eval problems; PRM "
          f"{args.prm}, tau {prm.taus[prm.q_index]}; eval: greedy pass@1{sampled}")
    print(json.dumps(vars(args), default=str))
    bound = max_dominant_lam(args.group_size, args.mode)
    if args.lam >= bound:
        print(f"warning: --lam {args.lam} >= {bound:.2f}, the bound for --mode {args.mode} with G="
              f"{args.group_size}: a wrong rollout can reach a right rollout's advantage",
              file=sys.stderr)
    if state is None:
        (Path(args.out) / "config.json").write_text(json.dumps(vars(args), indent=2, default=str))
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)
    return train(model, tokenizer, train_set, eval_set, args, amp, prm, state, ref_model)

if __name__ == "__main__":
    try:
        main()
    except ProgrsError as e:
        sys.exit(f"progrs.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("progrs.py: interrupted; metrics so far are in OUT/metrics.jsonl and the last "
                 "checkpoint in OUT/model: continue with --resume")
