"""
progrs.py: PROGRS (Process Rewards for Outcome-Guided Steps) in one file.

GRPO on math problems where a step-level process reward model (PRM) adds credit, while the verified
final answer stays in charge. The key move is outcome-conditioned centering: inside each prompt's
group of rollouts, the PRM scores of the *incorrect* rollouts are shifted to zero mean, so the PRM can
rank wrong answers against each other (better steps, partial credit) but can never lift wrong answers
as a class above right ones.

Run it (the default trains the ~1M-parameter model in tiny_task/ on CPU, offline, in a few minutes):

    pip install -r requirements.txt && python progrs.py
    python progrs.py --mode outcome                  # plain GRPO, for comparison
    python progrs.py --model Qwen/Qwen2.5-0.5B       # on a GPU: picks CUDA + bf16, 0.5B-sized defaults
    python progrs.py --model Qwen/Qwen2.5-0.5B-Instruct --chat
    pytest test_progrs.py

Read it top to bottom; the sections run in the order the algorithm does:
    data -> prompt -> verifier -> steps -> toy PRM -> coherence -> centering -> advantages
    -> rollouts -> loss -> training loop -> main

What is the paper's (arXiv 2604.02341; only its abstract is public):
  - GRPO with verifiable outcome rewards, a step-level PRM on top, the outcome kept in charge.
  - Outcome-conditioned centering of PRM scores among incorrect rollouts within each group.
  - A frozen quantile-regression PRM (per-step quantiles of success probability).
  - A multi-scale coherence score over windows of step scores: mu * exp(-lam_var * sigma / mu).
What is our reading, where the abstract is silent (each is marked "our reading" where it is coded):
  - The advantage is A = A_out + lam * centered_bonus, with A_out GRPO's group-normalised outcome
    reward; correct rollouts keep their uncentered process score as their bonus.
  - Steps are the non-empty lines before the answer line; windows are sliding windows of 2 and 4
    consecutive steps; zero steps give a process score of 0.
  - The PRM here is a toy: it checks each step's arithmetic and turns that evidence into quantiles of
    a Beta distribution. It stands in for a trained PRM behind one method, ToyPRM.score().
  - The trainer reads the lowest quantile (tau = 0.1) by default: a pessimistic PRM.
What is left out:
  - No trained PRM, no value network, no reference-model KL by default (--kl-coef turns it on),
    one policy update per batch by default (--ppo-epochs > 1 turns on the clipped ratio).
"""
from __future__ import annotations

import argparse
import ast
import copy
import functools
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TINY_TASK = HERE / "tiny_task"


class ProgrsError(Exception):
    """Bad input from the user: main() prints the message as one line and exits non-zero."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (no usage block), exit status 2."""

    def error(self, message):
        self.exit(2, f"progrs.py: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Every knob and its default, in one place. None means "chosen from the model's size" (main)."""
    p = OneLineErrorParser(description="PROGRS: GRPO with outcome-conditioned process rewards.")
    g = p.add_argument_group("model")
    g.add_argument("--model", default=str(TINY_TASK / "model"), help="local folder or hub id")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                   help="compute dtype; bf16 autocasts over fp32 master weights (auto: bf16 on cuda)")
    g.add_argument("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    g = p.add_argument_group("data")
    g.add_argument("--data", default=str(TINY_TASK / "train.jsonl"), help="train prompts (JSONL)")
    g.add_argument("--eval-data", default=str(TINY_TASK / "test.jsonl"), help="eval set (JSONL)")
    g.add_argument("--eval-size", type=int, default=None, help="eval problems (0: all)")
    g.add_argument("--eval-every", type=int, default=None, help="steps between greedy evals")
    g.add_argument("--eval-batch", type=int, default=None, help="prompts per greedy eval batch")
    g = p.add_argument_group("rollouts")
    g.add_argument("--steps", type=int, default=None, help="policy updates")
    g.add_argument("--prompts-per-step", type=int, default=None, help="P: prompts per step")
    g.add_argument("--group-size", type=int, default=8, help="G: rollouts per prompt (>= 2)")
    g.add_argument("--max-new-tokens", type=int, default=None, help="completion length cap")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    g = p.add_argument_group("rewards")
    g.add_argument("--mode", default="progrs", choices=["progrs", "outcome", "absolute"],
                   help="progrs: A_out + lam*centered b | outcome: plain GRPO | absolute: r + lam*b")
    g.add_argument("--lam", type=float, default=1.0, help="weight of the process bonus (>= 0)")
    g.add_argument("--prm-quantile", type=float, default=0.1, help="which PRM quantile to read")
    g.add_argument("--lam-var", type=float, default=1.0, help="coherence volatility penalty")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    g.add_argument("--warmup-steps", type=int, default=10, help="linear learning-rate warmup")
    g.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward")
    g.add_argument("--ppo-epochs", type=int, default=1, help="updates per batch (>1: clipped ratio)")
    g.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL to the initial model (0: off)")
    g.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping")
    g = p.add_argument_group("logging")
    g.add_argument("--out", default="out", help="metrics.jsonl, config.json and model/ go here")
    g.add_argument("--seed", type=int, default=0, help="same seed, same CPU: same numbers")
    return p


# Defaults that depend on the model's size: the tiny CPU model vs a 0.5B-class LLM on a GPU.
SIZE_DEFAULTS = {
    "tiny": dict(steps=60, prompts_per_step=16, max_new_tokens=64, lr=1e-4, micro_batch=128,
                 eval_every=20, eval_size=0, eval_batch=256),
    "llm": dict(steps=200, prompts_per_step=16, max_new_tokens=512, lr=1e-6, micro_batch=8,
                eval_every=25, eval_size=500, eval_batch=64),
}
TINY_MAX_PARAMS = 50_000_000


# ----------------------------------------------------------------------------------------------------
# Task and data
#
# A problem is {"question": str, "gold": str}. Files are JSONL with "question" and "answer"; "answer"
# is the bare final answer (tiny_task) or a GSM8K rationale whose last line is "#### N".

def parse_gold(answer: str) -> str:
    """The final answer of a record: the text after the last `####`, else the whole string."""
    if "####" in answer:
        return answer.rsplit("####", 1)[1].strip()
    return answer.strip()


def load_problems(path) -> list[dict]:
    """Read JSONL records with `question` and `answer` into [{"question", "gold"}]."""
    path = Path(path)
    if not path.is_file():
        raise ProgrsError(f"{path}: no such data file (expected JSONL with 'question' and 'answer')")
    problems = []
    try:
        # split("\n"), not splitlines(): a JSON string may hold U+2028, which is no line end in JSONL
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
        if not (isinstance(rec, dict) and isinstance(rec.get("question"), str)
                and isinstance(rec.get("answer"), (str, int, float))):
            raise ProgrsError(f"{path}:{lineno}: expected an object with a string 'question' "
                              "and an 'answer'")
        gold = parse_gold(str(rec["answer"]))
        if not rec["question"].strip() or not gold:
            raise ProgrsError(f"{path}:{lineno}: empty 'question' or empty final answer")
        problems.append({"question": rec["question"].strip(), "gold": gold})
    if not problems:
        raise ProgrsError(f"{path}: no records (expected JSONL with 'question' and 'answer')")
    return problems


# ----------------------------------------------------------------------------------------------------
# Prompt
#
# One prompt for everything: RL rollouts, greedy evaluation and the tiny model's supervised warm start
# (tiny_task/build_model.py imports it), so the model is never asked in a format it was not taught.

INSTRUCTION = "Solve the problem. Write one step per line, then a last line 'Answer: <answer>'."


def build_prompt(question: str, tokenizer=None, chat: bool = False) -> str:
    """Plain: INSTRUCTION / "Question: ..." / "Solution:". chat=True: the tokenizer's chat template."""
    if chat:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ProgrsError("--chat: this tokenizer has no chat template (drop --chat for a base "
                              "model)")
        messages = [{"role": "user", "content": f"{INSTRUCTION}\n{question}"}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{INSTRUCTION}\nQuestion: {question}\nSolution:\n"


# ----------------------------------------------------------------------------------------------------
# Verifier: exact match on the final answer
#
# r = 1 if the completion's final answer equals the gold answer, else 0. The final answer is the last
# \boxed{...}, else the last "Answer: ...", else the last "#### ...". No answer -> r = 0: there is no
# fallback to "the last number in the text", which would reward answers the model never committed to.

def _find_answer(text: str) -> tuple[str, int] | None:
    """(answer, index where its marker starts) of the answer the completion commits to, or None."""
    start = text.rfind("\\boxed{")
    while start != -1:  # brace matching, so \boxed{\frac{1}{2}} gives \frac{1}{2}
        i, depth = start + len("\\boxed{"), 1
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                return text[i:j].strip(), start
        start = text.rfind("\\boxed{", 0, start)  # unclosed: try an earlier one
    for marker in ("Answer:", "####"):
        k = text.rfind(marker)
        if k != -1:
            answer = text[k + len(marker):].split("\n", 1)[0].strip()
            return (answer, k) if answer else None
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a completion commits to, or None (which counts as incorrect).

    >>> extract_answer("2 + 3 = 5\\nAnswer: 5"), extract_answer("so \\\\boxed{\\\\frac{1}{2}}.")
    ('5', '\\\\frac{1}{2}')
    """
    found = _find_answer(text)
    return found[0] if found else None


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")


def normalize_answer(ans: str) -> str | float:
    """Drop surrounding spaces, `$`, one trailing period and thousands commas; numbers become floats."""
    s = ans.strip().replace("$", "").strip()
    s = s[:-1].strip() if s.endswith(".") else s
    if _NUMBER.fullmatch(s.replace(",", "")):
        return float(s.replace(",", ""))
    return s


def is_correct(completion: str, gold: str) -> bool:
    """Exact match after normalisation; numbers compare by value (72 == 72.0 == 72.00)."""
    pred = extract_answer(completion)
    if pred is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    return p == g  # float == float by value; str == str exactly; float vs str is never equal


# ----------------------------------------------------------------------------------------------------
# Steps
#
# A step is a non-empty line before the answer line. Lines, not blank-line paragraphs: the prompt asks
# for one step per line, and GSM8K rationales are written that way. Step counts are easy to hack: a
# PRM that averages over steps can be gamed by padding an answer with many trivially valid steps, so
# the trainer logs steps per answer; watch it.

def split_steps(completion: str) -> list[str]:
    """The non-empty, stripped lines before the answer line (all lines if there is no answer)."""
    found = _find_answer(completion)
    body = completion if found is None else completion[:completion.rfind("\n", 0, found[1]) + 1]
    return [line.strip() for line in body.split("\n") if line.strip()]


# ----------------------------------------------------------------------------------------------------
# Toy step-level PRM (frozen)
#
# The paper reads a trained quantile-regression PRM: for step s, the quantiles q_tau(s) of the
# probability of success. A trained PRM conditions on every step so far; ours is a rule that judges
# each step on its own (its equations), which is enough to show the mechanism, with the same interface:
#   evidence:  t = true equations in the step, f = false ones (checked arithmetically),
#   belief:    p(sound) ~ Beta(1 + k*t, 1 + k*f)            (k = EVIDENCE, uniform prior),
#   output:    q_tau = the tau-quantile of that Beta, for tau in TAUS (non-decreasing in tau).
# A step with no checkable equation keeps the uniform prior: q = tau, a neutral, wide distribution.
#
# Its blind spot is deliberate, and it is a real PRM's blind spot too: it checks that each equation is
# true, not that the step uses the problem's numbers or leads to the answer. "29 + 14 = 43" scores as a
# sound step even when the question said 28. Fluent but wrong reasoning scores high. This is exactly
# what outcome-conditioned centering protects against: such a rollout can beat other wrong rollouts,
# never a correct one.

_NUM = r"\d[\d,]*(?:\.\d+)?"
_EQUATION = re.compile(  # a op b [op c ...] = c, also "= $c"; chains like 47 + 28 - 19 = 56
    rf"(?<![\w.])\(*-?{_NUM}\)*(?:\s*[-+*/×x÷]\s*\(*-?{_NUM}\)*)+\s*=\s*\$?\s*(-?{_NUM})")


_ANNOTATION = re.compile(r"<<([^<>]*=[^<>]*)>>")


def safe_eval(expr: str) -> float | None:
    """Evaluate + - * / and parentheses over numbers; anything else (or x/0) gives None.

    Model text never reaches eval(): ast.parse only builds a tree, and we walk it ourselves.
    """
    expr = expr.replace(",", "").replace("×", "*").replace("x", "*").replace("÷", "/")
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            a, b = walk(node.left), walk(node.right)
            if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
                return None
            return ops[type(node.op)](a, b)
        return None

    return walk(tree)


def check_equations(step: str) -> tuple[int, int]:
    """(true, false) counts of the arithmetic equations written in one step."""
    true = false = 0
    annotations = _ANNOTATION.findall(step)           # GSM8K's "<<9*2=18>>" calculator notes
    plain = _ANNOTATION.sub("", step)                 # "9 * 2 = $<<9*2=18>>18" -> "9 * 2 = $18"
    for eq in annotations + [m.group(0) for m in _EQUATION.finditer(plain)]:
        lhs, rhs = eq.rsplit("=", 1)
        value, claimed = safe_eval(lhs), safe_eval(rhs.replace("$", "").strip())
        if value is None or claimed is None:
            continue  # not checkable (e.g. division by zero): no evidence either way
        if math.isclose(value, claimed, rel_tol=1e-6, abs_tol=1e-6):
            true += 1
        else:
            false += 1
    return true, false


@functools.lru_cache(maxsize=None)
def beta_quantiles(a: float, b: float, taus: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of Beta(a, b), by inverting its CDF on a fine grid (no scipy needed)."""
    x = np.linspace(0.0, 1.0, 20001)
    logpdf = (a - 1) * np.log(np.clip(x, 1e-12, 1)) + (b - 1) * np.log(np.clip(1 - x, 1e-12, 1))
    cdf = np.cumsum(np.exp(logpdf - logpdf.max()))
    cdf /= cdf[-1]
    return tuple(float(np.interp(t, cdf, x)) for t in taus)


class ToyPRM:
    """Frozen step-level PRM: score(question, steps) -> (S, Q) quantiles of p(step is sound).

    To plug in a real PRM, replace score(); nothing else in the trainer looks inside it.
    """

    TAUS = (0.1, 0.5, 0.9)
    EVIDENCE = 4.0  # pseudo-counts one checked equation adds to the Beta belief

    def score(self, question: str, steps: list[str]) -> torch.Tensor:
        rows = []
        for step in steps:
            t, f = check_equations(step)
            rows.append(beta_quantiles(1 + self.EVIDENCE * t, 1 + self.EVIDENCE * f, self.TAUS))
        return torch.tensor(rows, dtype=torch.float32).reshape(len(steps), len(self.TAUS))  # (S, Q)


# ----------------------------------------------------------------------------------------------------
# Learned PRM (frozen), behind the same score(question, steps) -> (S, Q) interface
#
# A Hugging Face token-classification model reads the prompt followed by the steps, each ending with
# STEP_SEP, and is read at the last token of each step (the separator). Two kinds of head:
#   quantile head: one output per tau, id2label {0: "q0.1", 1: "q0.5", 2: "q0.9"}; the raw outputs
#       z are mapped to quantiles that cannot cross, whatever the weights:
#           q_tau1 = sigmoid(z_1),   q_tauk = sigmoid(z_1 + softplus(z_2) + ... + softplus(z_k))
#   two-class head ("bad step" / "good step"): p(good) = softmax(z)[good], its one score.
# tiny_task/build_prm.py trains a quantile head with the pinball loss on Monte-Carlo success rates.

STEP_SEP = "\n"


def prm_inputs(tokenizer, question: str, steps: list[str], sep: str = STEP_SEP):
    """(token ids of prompt + steps, index of each step's last token). Each piece is tokenised on its
    own, so a step's end is exact whatever the tokenizer merges across a boundary."""
    ids = tokenizer(build_prompt(question), add_special_tokens=False)["input_ids"]
    ends = []
    for step in steps:
        ids = ids + tokenizer(step + sep, add_special_tokens=False)["input_ids"]
        ends.append(len(ids) - 1)
    return ids, ends


def quantiles_from_logits(z: torch.Tensor) -> torch.Tensor:
    """(..., Q) raw head outputs -> (..., Q) quantiles in (0, 1), strictly increasing along the last dim."""
    steps = torch.cat([z[..., :1], torch.nn.functional.softplus(z[..., 1:])], -1)
    return torch.sigmoid(steps.float().cumsum(-1))


# ----------------------------------------------------------------------------------------------------
# Coherence: one process score b per trajectory
#
# Given step scores s_1..s_S (one PRM quantile per step), for each window size W in `windows`:
#     every run of W consecutive steps (a sliding window; our reading) gives
#         r_coh = mu * exp(-lam_var * sigma / mu)          (mu, sigma: mean and std in the window)
#     and the scale's score is the mean over its windows.
# b = the mean over scales. Fewer steps than W: the whole sequence is one window.
# A steady run of good steps keeps b near mu; a run that swings between confident and doubtful steps
# is discounted. Defined everywhere: scores are clipped to [0, 1] so b is in [0, 1]; mu = 0 gives 0
# (the limit of mu * exp(-c/mu)); zero steps give b = 0 (no process, no process credit; our reading).

def coherence_score(step_scores, windows=(2, 4), lam_var: float = 1.0) -> float:
    s = torch.as_tensor(step_scores, dtype=torch.float64).reshape(-1).clamp(0.0, 1.0)  # (S,)
    if s.numel() == 0:
        return 0.0
    per_scale = []
    for w in windows:
        win = s.unfold(0, min(w, s.numel()), 1)                         # (S - W + 1, W)
        mu, sigma = win.mean(-1), win.std(-1, correction=0)
        r = torch.where(mu > 0, mu * torch.exp(-lam_var * sigma / mu.clamp(min=1e-12)), 0.0)
        per_scale.append(r.mean())
    return float(torch.stack(per_scale).mean())


# ----------------------------------------------------------------------------------------------------
# Centering: the function to copy (it needs torch and nothing else)

def outcome_conditioned_centering(scores: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Shift the process scores of each group's incorrect rollouts to zero mean.

    scores:  (P, G) float, one process score per rollout (P prompts, G rollouts each; any leading
             shape works, groups are along the last dim).
    correct: (P, G) bool (or 0/1), the verified outcome of each rollout.
    returns: (P, G) centered bonus, same dtype/device/shape:
        c_ij = s_ij - mean{ s_ik : k incorrect }   if rollout j is incorrect
        c_ij = s_ij                                 if rollout j is correct
    Rows with no incorrect rollout are unchanged; a single incorrect rollout gets 0; the sum is taken
    in at least float32, so half-precision scores do not overflow. Among incorrect
    rollouts the PRM's ranking survives, but their bonuses average to 0, so the PRM cannot lift wrong
    answers as a class.

    >>> s = torch.tensor([[0.9, 0.2, 0.6, 0.4]]); ok = torch.tensor([[True, False, False, False]])
    >>> outcome_conditioned_centering(s, ok)
    tensor([[ 0.9000, -0.2000,  0.2000,  0.0000]])
    """
    wrong = ~correct.bool()
    x = scores.to(torch.promote_types(scores.dtype, torch.float32))  # fp16 sums overflow at 65504
    n_wrong = wrong.sum(-1, keepdim=True).clamp(min=1)                      # (P, 1); no 0/0
    wrong_mean = torch.where(wrong, x, 0.0).sum(-1, keepdim=True) / n_wrong  # (P, 1)
    return torch.where(wrong, x - wrong_mean, x).to(scores.dtype)           # (P, G)


# ----------------------------------------------------------------------------------------------------
# Advantages
#
# Outcome (GRPO):  A_out_ij = (r_ij - mean_j r_i) / (std_j r_i + eps)          r in {0, 1}
#                  (population std; some trainers use the sample std, a slightly smaller A_out)
# --mode progrs:   A_ij = A_out_ij + lam * c_ij,  c = outcome_conditioned_centering(b, r)   (our
#                  reading of the paper's Eq. 3). A group whose rollouts share one outcome has A_out = 0
#                  and learns only from the bonus: all wrong -> which wrong answers had better steps;
#                  all right -> every rollout gets a positive advantage lam * b, more for sounder
#                  steps: a push towards all of them, like supervised training on its own right
#                  answers (our reading: correct rollouts keep their uncentered score).
# --mode outcome:  A = A_out (plain GRPO; the PRM is computed and logged but not used).
# --mode absolute: the naive blend the paper warns against: reward = r + lam * b, group-normalised.
#                  A wrong answer with fluent steps can then out-score a right one.
#
# Dominance. In a mixed group with k of G right (p = k/G), A_out(right) - A_out(wrong) = 1/(std + eps)
# with std = sqrt(p(1-p)), while the bonuses differ by at most lam * (n_wrong - 1)/n_wrong (b in
# [0, 1]; a right bonus is >= 0, a centered wrong one < 1). So progrs keeps every right rollout above
# every wrong one in its group whenever lam < max_dominant_lam(G) (2.58 for G = 8; > 2 for any G).

ADV_EPS = 1e-6


def group_normalize(rewards: torch.Tensor, eps: float = ADV_EPS) -> torch.Tensor:
    """(r - mean) / (std + eps) within each row: (P, G) -> (P, G). Uniform rows give 0."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True, correction=0)
    return (rewards - mean) / (std + eps)


def compute_advantages(correct: torch.Tensor, b: torch.Tensor, mode: str, lam: float):
    """(P, G) outcomes and process scores -> (advantages, A_out, centered bonus), each (P, G)."""
    r = correct.float()
    a_out = group_normalize(r)
    bonus = outcome_conditioned_centering(b, correct)
    if mode == "progrs":
        adv = a_out + lam * bonus
    elif mode == "outcome":
        adv = a_out
    elif mode == "absolute":
        adv = group_normalize(r + lam * b)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return adv, a_out, bonus


def max_dominant_lam(group_size: int, eps: float = ADV_EPS) -> float:
    """The largest lam for which progrs keeps every right rollout above every wrong one (b in [0,1])."""
    bound = math.inf
    for k in range(1, group_size):  # k right, n = G - k wrong
        p, n = k / group_size, group_size - k
        if n >= 2:
            bound = min(bound, (1 / (math.sqrt(p * (1 - p)) + eps)) / ((n - 1) / n))
    return bound


def dominance_violations(adv: torch.Tensor, correct: torch.Tensor) -> int:
    """Pairs (right i, wrong j) in the same group with A_j >= A_i."""
    ok = correct.bool()
    pair = ok.unsqueeze(-1) & ~ok.unsqueeze(-2)                              # (P, G_i, G_j)
    return int((pair & (adv.unsqueeze(-2) >= adv.unsqueeze(-1))).sum())


# ----------------------------------------------------------------------------------------------------
# Rollouts
#
# One batched, KV-cached generate() per step for P prompts x G samples, left-padded. Sampling is
# exactly on-policy: temperature as set, and top_k=0, top_p=1.0, repetition_penalty=1.0 passed
# explicitly, because generate() otherwise fills unset values from the model's generation_config or
# its own defaults (top_k=50), and the policy gradient would be taken for a distribution we did not
# sample from.
#
# The completion mask covers tokens up to and including the first EOS. It is built from positions, not
# from `token == pad`: pad is often EOS (Qwen2.5), and the EOS itself must be trained, or the model
# never learns to stop. A completion with no EOS within max_new_tokens is truncated (counted).

def completion_mask(completions: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) completion tokens -> (mask (B, T) up to and incl. the first EOS, truncated (B,))."""
    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device))   # (B, T)
    T = completions.shape[1]
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), T)                    # (B,)
    mask = torch.arange(T, device=completions.device)[None, :] <= first_eos[:, None]    # (B, T)
    return mask, ~is_eos.any(1)


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted(set(ids) | {tokenizer.eos_token_id})


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int,
             temperature: float, amp) -> dict:
    """n samples per prompt (temperature 0: one greedy completion each); rows are prompt-major."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)  # (P, Tp), left pad
    eos_ids = eos_token_ids(model, tokenizer)
    # explicit values win over the model's generation_config; greedy takes no sampling knobs
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
        if temperature > 0 else dict(do_sample=False)
    with amp():
        seqs = model.generate(
            **enc, max_new_tokens=max_new_tokens, num_return_sequences=n, **sampling,
            repetition_penalty=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids)
    Tp = enc["input_ids"].shape[1]
    completions = seqs[:, Tp:]                                                    # (B, T), B = P*n
    mask, truncated = completion_mask(completions, eos_ids)                       # (B, T), (B,)
    texts = [tokenizer.decode(c[m], skip_special_tokens=True) for c, m in zip(completions, mask)]
    prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)                   # (B, Tp)
    return dict(input_ids=seqs, attention_mask=torch.cat([prompt_mask, mask.long()], 1),
                completion_mask=mask, truncated=truncated, texts=texts, prompt_len=Tp)


# ----------------------------------------------------------------------------------------------------
# Loss and update
#
# Token log-probs come from one forward pass over prompt + completion, with the logits divided by the
# sampling temperature (the policy we sampled from is softmax(logits / T)) and position ids rebuilt
# from the attention mask exactly as generate() builds them for left-padded rows.
#
# Per-token policy-gradient loss, summed over completion tokens and divided by N, the number of
# completion tokens in the *whole batch* (not per micro-batch, not per sequence), so micro-batching
# only changes memory, never the gradient:
#     L = -(1/N) sum_i sum_t min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) [+ kl_coef * k3_it]
#     rho_it = pi(y_it) / pi_old(y_it)
# With one update per batch (--ppo-epochs 1, the default) the old log-probs are the same forward
# pass's values, detached: rho = 1 and its gradient is grad log pi, so this is REINFORCE with group
# baselines and the clip never acts. Only with --ppo-epochs K > 1 does the policy move away from the
# one that sampled, and the clipped ratio keeps later epochs near it.
#
# The logged loss says little about learning: with rho = 1 its value is -(1/N) sum_i A_i * len_i,
# a length-weighted sum of advantages, while the gradient is -(1/N) sum_i A_i sum_t grad log pi(y_it).
# It is negative in --mode progrs (right rollouts keep an uncentred bonus +lam * b, so advantages do
# not sum to zero in a group) and moves with any link between advantage and length (in --mode outcome
# right answers are longer than wrong ones here). Watch accuracy and the gradient norm, not the loss.
#
# KL to a frozen copy of the initial model (k3 estimator: exp(ref - logp) - (ref - logp) - 1) is off
# by default: with verifiable rewards and few steps the policy drifts little, the reference costs a
# second model in memory and a second forward pass, and recent GRPO recipes drop it.

PPO_CLIP = 0.2


def token_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float, amp):
    """log pi(y_t | y_<t) for every completion token: (B, Tp + T) -> (B, T)."""
    T = input_ids.shape[1] - prompt_len
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)                   # (B, Tp + T)
    with amp():
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids, logits_to_keep=T + 1).logits     # (B, T + 1, V)
    logits = logits[:, :-1].float() / temperature                                 # (B, T, V)
    targets = input_ids[:, prompt_len:]                                           # (B, T)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)                 # (B, T)
    return picked - torch.logsumexp(logits, -1)                                   # (B, T)


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
    loss = (per_token * mask).sum() / n_tokens
    return loss, (None if kl is None else (kl * mask).sum() / n_tokens)


def update_policy(model, optimizer, batch, adv, args, amp, ref_model=None) -> dict:
    """--ppo-epochs optimizer steps on one batch, each accumulating all micro-batches."""
    mask = batch["completion_mask"].float()                                       # (B, T)
    adv = adv.to(mask.device)  # scored on the CPU, trained wherever the model is
    n_tokens = mask.sum().clamp(min=1)
    B, Tp = mask.shape[0], batch["prompt_len"]
    slices = [slice(i, i + args.micro_batch) for i in range(0, B, args.micro_batch)]
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
            loss, kl = policy_loss(logp, old[k], adv[s], mask[s], n_tokens,
                                   ref.get(k), args.kl_coef)
            loss.backward()
            loss_sum += loss.item()
            kl_sum += 0.0 if kl is None else kl.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise ProgrsError(f"non-finite gradient norm at ppo epoch {epoch}; lower --lr")
        optimizer.step()
        if epoch == 0:
            stats = dict(loss=loss_sum, kl=kl_sum, grad_norm=float(grad_norm))
    model.eval()
    return stats


# ----------------------------------------------------------------------------------------------------
# Training loop
#
# Each step: P prompts -> G rollouts each -> verify (r) -> PRM step scores -> coherence (b)
#            -> centering (c) -> advantages (A) -> one policy update.
# Greedy pass@1 on the eval set at the start, every --eval-every steps and at the end.

def score_completions(problems: list[dict], texts: list[str], prm, q_index: int,
                      lam_var: float) -> dict:
    """Verify and PRM-score completions (one problem per text): lists, one entry per completion."""
    out = dict(correct=[], b=[], step_scores=[], n_steps=[], trace_error=[])
    for prob, text in zip(problems, texts):
        steps = split_steps(text)
        q = prm.score(prob["question"], steps)[:, q_index] if steps else torch.zeros(0)  # (S,)
        ok = is_correct(text, prob["gold"])
        out["correct"].append(ok)
        out["step_scores"].append(q.tolist())
        out["b"].append(coherence_score(q, lam_var=lam_var))
        out["n_steps"].append(len(steps))
        # a right answer reached through at least one false equation (the verifier cannot see it)
        out["trace_error"].append(ok and any(check_equations(s)[1] > 0 for s in steps))
    return out


def rollout_step(model, tokenizer, problems: list[dict], args, prm, amp) -> dict:
    """Sample G rollouts for each of P problems and compute everything the update needs."""
    t0 = time.perf_counter()
    prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in problems]
    batch = generate(model, tokenizer, prompts, args.group_size, args.max_new_tokens,
                     args.temperature, amp)
    t1 = time.perf_counter()
    P, G = len(problems), args.group_size
    per_rollout = [p for p in problems for _ in range(G)]                         # prompt-major
    scored = score_completions(per_rollout, batch["texts"], prm, args.q_index, args.lam_var)
    correct = torch.tensor(scored["correct"]).view(P, G)                          # (P, G)
    b = torch.tensor(scored["b"], dtype=torch.float32).view(P, G)                 # (P, G)
    adv, a_out, bonus = compute_advantages(correct, b, args.mode, args.lam)       # (P, G) each
    batch.update(scored, correct=correct, b_grid=b, adv=adv, a_out=a_out, bonus=bonus,
                 t_generate=t1 - t0, t_score=time.perf_counter() - t1)
    return batch


@torch.no_grad()
def evaluate(model, tokenizer, problems: list[dict], args, prm, amp) -> dict:
    """Greedy pass@1, plus the trace-error rate and steps per answer of the greedy completions."""
    texts = []
    for i in range(0, len(problems), args.eval_batch):
        chunk = problems[i:i + args.eval_batch]
        prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in chunk]
        texts += generate(model, tokenizer, prompts, 1, args.max_new_tokens, 0.0, amp)["texts"]
    s = score_completions(problems, texts, prm, args.q_index, args.lam_var)
    n_right = sum(s["correct"])
    return dict(eval_accuracy=n_right / len(problems),
                eval_trace_error_rate=sum(s["trace_error"]) / max(n_right, 1),
                eval_steps_per_answer=float(np.mean(s["n_steps"])), texts=texts)


def step_metrics(batch: dict, args) -> dict:
    """One JSON line of what happened in a training step."""
    correct, b, bonus, adv = batch["correct"], batch["b_grid"], batch["bonus"], batch["adv"]
    n_right = int(correct.sum())
    k = correct.sum(-1)
    mask = batch["completion_mask"]

    def mean(x):  # None (JSON null) for an empty selection, e.g. no right rollout this step
        return float(x.mean()) if x.numel() else None

    return dict(
        train_accuracy=n_right / correct.numel(),
        process_score=mean(b), process_score_correct=mean(b[correct]),
        process_score_incorrect=mean(b[~correct]),
        bonus_correct=mean(bonus[correct]), bonus_incorrect_abs=mean(bonus[~correct].abs()),
        groups_all_correct=int((k == args.group_size).sum()), groups_all_wrong=int((k == 0).sum()),
        dominance_violations=dominance_violations(adv, correct),
        trace_error_rate=sum(batch["trace_error"]) / max(n_right, 1),
        steps_per_answer=float(np.mean(batch["n_steps"])),
        completion_tokens=float(mask.sum(-1).float().mean()),
        truncated=int(batch["truncated"].sum()),
    )


def teaching_view(batch: dict, problems: list[dict], width: int = 60) -> str:
    """One rollout group as a table: the most mixed group of the batch (most right-wrong pairs)."""
    correct = batch["correct"]
    G = correct.shape[1]
    k = correct.sum(-1)
    i = int((k * (G - k)).argmax())
    lines = [f"question: {problems[i]['question']}   gold: {problems[i]['gold']}",
             f"{'ok':>3} {'step scores':<24} {'b':>5} {'bonus':>6} {'A_out':>6} {'A':>6}  completion"]
    for j in range(G):
        r = i * G + j
        steps = " ".join(f"{s:.2f}" for s in batch["step_scores"][r][:6])
        text = batch["texts"][r].replace("\n", " | ")
        text = text if len(text) <= width else text[:width - 3] + "..."
        lines.append(f"{'yes' if correct[i, j] else 'no':>3} {steps:<24} {batch['b_grid'][i, j]:5.2f} "
                     f"{batch['bonus'][i, j]:+6.2f} {batch['a_out'][i, j]:+6.2f} "
                     f"{batch['adv'][i, j]:+6.2f}  {text}")
    return "\n".join(lines)


def train(model, tokenizer, train_set, eval_set, args, amp, log=print) -> dict:
    """The whole run: returns {"before": eval, "after": eval}, writes OUT/metrics.jsonl and OUT/model."""
    from tqdm.auto import tqdm  # ships with transformers (huggingface_hub)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(vars(args), indent=2, default=str))
    prm = ToyPRM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # Linear warmup: Adam's first steps move every weight by about lr whatever its gradient's size
    # (its second-moment estimate starts from one sample), which jolts a small model.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / (args.warmup_steps + 1)))
    ref_model = None
    if args.kl_coef > 0:
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    rng, queue = random.Random(args.seed), []

    def next_problems():  # P prompts at a time, reshuffled every epoch over the train set
        nonlocal queue
        while len(queue) < args.prompts_per_step:
            queue += rng.sample(range(len(train_set)), len(train_set))
        picked, queue = queue[:args.prompts_per_step], queue[args.prompts_per_step:]
        return [train_set[i] for i in picked]

    def run_eval(step, metrics_file):
        t0 = time.perf_counter()
        ev = evaluate(model, tokenizer, eval_set, args, prm, amp)
        rec = {k: v for k, v in ev.items() if k != "texts"}
        rec.update(step=step, t_eval=time.perf_counter() - t0)
        metrics_file.write(json.dumps(rec) + "\n")
        metrics_file.flush()
        log(f"step {step}: greedy pass@1 {ev['eval_accuracy']:.1%} on {len(eval_set)} problems, "
            f"trace errors {ev['eval_trace_error_rate']:.1%} of right answers, "
            f"{ev['eval_steps_per_answer']:.2f} steps/answer")
        return ev

    with open(out_dir / "metrics.jsonl", "w") as mf:
        before = run_eval(0, mf)
        view = [train_set[0]]  # before any update there is no batch yet: sample one group to show
        log(teaching_view(rollout_step(model, tokenizer, view, args, prm, amp), view))
        bar = tqdm(range(1, args.steps + 1), desc="progrs", file=sys.stdout, dynamic_ncols=True,
                   disable=None)
        last = before
        for step in bar:
            problems = next_problems()
            batch = rollout_step(model, tokenizer, problems, args, prm, amp)
            t0 = time.perf_counter()
            upd = update_policy(model, optimizer, batch, batch["adv"].flatten(), args, amp, ref_model)
            schedule.step()
            rec = dict(step=step, **step_metrics(batch, args), **upd,
                       t_generate=batch["t_generate"], t_score=batch["t_score"],
                       t_update=time.perf_counter() - t0)
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
        bar.close()
    log(f"greedy pass@1: {before['eval_accuracy']:.1%} -> {last['eval_accuracy']:.1%} "
        f"({100 * (last['eval_accuracy'] - before['eval_accuracy']):+.1f} points) on "
        f"{len(eval_set)} problems after {args.steps} steps (mode {args.mode}, lam {args.lam})")
    model.save_pretrained(out_dir / "model")
    tokenizer.save_pretrained(out_dir / "model")
    return dict(before=before, after=last)


# ----------------------------------------------------------------------------------------------------
# Main: flags -> data -> model -> train

def check_args(args) -> None:
    """Stop early, with one line naming the flag, on values that would train silently wrong."""
    rules = [("--group-size", args.group_size >= 2, "at least 2 (GRPO needs a group to compare)"),
             ("--lam", args.lam >= 0, "non-negative"),
             ("--temperature", args.temperature > 0, "positive (rollouts are sampled)"),
             ("--prm-quantile", args.prm_quantile in ToyPRM.TAUS, f"one of {ToyPRM.TAUS}"),
             ("--lam-var", args.lam_var >= 0, "non-negative"),
             ("--ppo-epochs", args.ppo_epochs >= 1, "at least 1"),
             ("--warmup-steps", args.warmup_steps >= 0, "0 or more"),
             ("--kl-coef", args.kl_coef >= 0, "non-negative"),
             ("--max-grad-norm", args.max_grad_norm > 0, "positive")]
    for flag in ("steps", "prompts_per_step", "max_new_tokens", "micro_batch", "eval_every",
                 "eval_batch"):
        v = getattr(args, flag)
        rules.append((f"--{flag.replace('_', '-')}", v is None or v >= 1, "at least 1"))
    rules += [("--eval-size", args.eval_size is None or args.eval_size >= 0, "0 (all) or more"),
              ("--lr", args.lr is None or args.lr > 0, "positive")]
    finite = [(f"--{f.replace('_', '-')}", getattr(args, f) is None or math.isfinite(getattr(args, f)),
               "a finite number")
              for f in ("lam", "temperature", "lam_var", "kl_coef", "max_grad_norm", "lr")]
    rules = finite + rules  # inf/nan first: they would pass the range checks below or fail obscurely
    rules.append(("--out", not Path(args.out).exists() or Path(args.out).is_dir(),
                  "a folder (it is an existing file)"))
    for flag, ok, expected in rules:
        if not ok:
            raise ProgrsError(f"{flag}: expected {expected}, got {getattr(args, flag[2:].replace('-', '_'))}")


def pick_device(args) -> tuple[torch.device, bool]:
    """(device, use bf16 autocast)."""
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ProgrsError(f"--device {args.device}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProgrsError(f"--device {args.device}: CUDA is not available on this machine")
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    return device, bf16


def load_model(name: str, device: torch.device):
    """Tokenizer + causal LM from a local folder or the hub; the same code path for both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith(".")
    if not Path(name).exists() and not looks_like_hub_id:
        raise ProgrsError(f"--model {name}: no such folder (expected a model folder or a hub id)")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise ProgrsError(f"--model {name}: no config.json in this folder (expected a saved model: "
                          "config.json, weights and tokenizer files)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        # fp32 master weights even for bf16 runs: bf16 weights would round away lr ~1e-6 updates
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProgrsError(f"--model {name}: could not load it ({first})") from None
    tokenizer.padding_side = "left"  # generation appends on the right
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    check_args(args)
    device, bf16 = pick_device(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    train_set, eval_set = load_problems(args.data), load_problems(args.eval_data)
    model, tokenizer = load_model(args.model, device)
    n_params = sum(p.numel() for p in model.parameters())
    size = "tiny" if n_params < TINY_MAX_PARAMS else "llm"
    for k, v in SIZE_DEFAULTS[size].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.eval_size:
        eval_set = eval_set[:args.eval_size]
    args.q_index = ToyPRM.TAUS.index(args.prm_quantile)
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)

    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters on {device}"
          f"{' (bf16 autocast)' if bf16 else ''}; {len(train_set)} train / {len(eval_set)} eval problems")
    print(json.dumps({k: v for k, v in vars(args).items()}, default=str))
    bound = max_dominant_lam(args.group_size)
    if args.mode == "progrs" and args.lam >= bound:
        print(f"warning: --lam {args.lam} >= {bound:.2f}: with G={args.group_size} a wrong rollout "
              "with sound-looking steps can reach a right rollout's advantage", file=sys.stderr)
    return train(model, tokenizer, train_set, eval_set, args, amp)


if __name__ == "__main__":
    try:
        main()
    except ProgrsError as e:
        sys.exit(f"progrs.py: error: {e}")
