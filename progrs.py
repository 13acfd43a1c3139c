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

Read it top to bottom: the PROGRS idea as pure functions first, then the pipeline as data flows:
flags, data and prompt, rollouts, verifier, toy and learned PRMs, loss, training loop, main.

The paper's (arXiv 2604.02341; only its abstract is public): GRPO with verifiable outcome rewards and a
step-level PRM, the outcome in charge; outcome-conditioned centering among incorrect rollouts in each
group; a frozen quantile-regression PRM; multi-scale coherence, mu * exp(-lam_var * sigma / mu).
Our reading, where it is silent (marked "our reading" where it is coded): A = A_out + lam * c, right
rollouts keep b; the verified answer is the first committed answer line, and decoding stops there;
steps are the lines before it; windows slide over 2 and 4 judged steps; no judged step gives b = 0; the
default PRM is a toy that checks each step's arithmetic, read at its lowest quantile (tau 0.1), and
learned PRMs plug in behind the same interface; --mode progrs-strict centres right rollouts too.
Left out: a value network; a reference-model KL by default (--kl-coef); more than one policy update per
batch by default (--ppo-epochs > 1 turns on the clipped ratio).
"""
import argparse, ast, collections, contextlib, copy, functools, hashlib, itertools, json, math, os, random, re
import shutil, sys, tempfile, time
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.utils.checkpoint

# ----------------------------------------------------------------------------------------------------
# The PROGRS idea, as pure functions of (P, G) tensors: P prompts, G rollouts each (torch only)
# Each rollout has an outcome r in {0, 1} (the verifier) and a process score b in [0, 1] (the PRM's step
# scores, combined by coherence_score). The advantage of rollout j of prompt i:
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
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True, correction=0) + eps)

def compute_advantages(correct: torch.Tensor, b: torch.Tensor, mode: str, lam: float):
    """(P, G) outcomes and process scores -> (advantages A, A_out, centered bonus c), each (P, G).

    progrs: A = A_out + lam * c; a group sharing one outcome has A_out = 0 and learns from c alone (all
    wrong: which wrong answers had better steps; all right: a push to each, more for sounder steps).
    outcome: plain GRPO. absolute: the naive blend the paper warns against, r + lam * b normalised, so a
    wrong answer with fluent steps can out-score a right one. progrs-strict (our stricter reading): right
    rollouts are centred among themselves too, so the PRM only orders rollouts within an outcome class.

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
    r, bonus = correct.float(), outcome_conditioned_centering(b, correct)
    a_out = group_normalize(r)
    if mode == "progrs-strict":  # the same centering, roles swapped, centres the right rollouts too
        bonus = torch.where(correct.bool(), outcome_conditioned_centering(b, ~correct.bool()), bonus)
    adv = {"progrs": a_out + lam * bonus, "progrs-strict": a_out + lam * bonus, "outcome": a_out,
           "absolute": group_normalize(r + lam * b)}[mode]
    return adv, a_out, bonus

# Dominance: with k of G right, A_out(right) - A_out(wrong) = 1 / (sqrt(p(1-p)) + eps), p = k/G, while
# bonuses differ by less than lam * (n_wrong - 1) / n_wrong, so lam < max_dominant_lam(G) (2.58 at G = 8)
# keeps every right rollout above every wrong one in its group.

def max_dominant_lam(group_size: int, eps: float = ADV_EPS) -> float:
    """The largest lam for which progrs keeps every right rollout above every wrong one (b in [0,1])."""
    G = group_size  # k right and n = G - k >= 2 wrong: the outcome gap over the largest bonus gap
    gaps = ((1 / (math.sqrt(k / G * (1 - k / G)) + eps)) / ((G - k - 1) / (G - k)) for k in range(1, G - 1))
    return min(gaps, default=math.inf)

def dominance_violations(adv: torch.Tensor, correct: torch.Tensor) -> int:
    """Pairs (right i, wrong j) in the same group with A_j >= A_i."""
    pair = correct.bool().unsqueeze(-1) & ~correct.bool().unsqueeze(-2)      # (P, G_i, G_j)
    return int((pair & (adv.unsqueeze(-2) >= adv.unsqueeze(-1))).sum())

# Coherence: b = the mean over window sizes W of the mean over sliding windows (our reading) of W
# consecutive step scores of r_coh = mu * exp(-lam_var * sigma / mu). Steady good steps keep b near mu;
# swings are discounted. Unjudged steps (NaN) are dropped; none left gives b = 0 (our reading).

def coherence_score(step_scores, windows=(2, 4), lam_var: float = 1.0) -> float:
    s = torch.as_tensor(step_scores, dtype=torch.float64).reshape(-1)                  # (S,)
    s, per_scale = s[~torch.isnan(s)].clamp(0.0, 1.0), []
    if s.numel() == 0: return 0.0
    for w in windows:
        win = s.unfold(0, min(w, s.numel()), 1)                                       # (S - W + 1, W)
        mu, sigma = win.mean(-1), win.std(-1, correction=0)
        r = torch.where(mu > 0, mu * torch.exp(-lam_var * sigma / mu.clamp(min=1e-12)), 0.0)
        per_scale.append(r.mean())
    return float(torch.stack(per_scale).mean())

# Fluent failures, the gauge to watch for PRM hacking: wrong rollouts the PRM rates like right ones, with
# a judged step and a b that reaches the median b of right rollouts (this batch's and the run's last
# FLUENT_POOL right training rollouts). A rank, so independent of the PRM's scale, and defined in a step
# with no right rollout; None until a right rollout has been seen.

FLUENT_POOL = 256

def fluent_failures(b, correct, judged, right_b) -> torch.Tensor | None:
    """(N,) process scores, outcomes, has-a-judged-step, and the reference pool of right b's ->
    (N,) bool: wrong rollouts whose b reaches the pool's median (None for an empty pool).
    >>> fluent_failures(torch.tensor([0.9, 0.7, 0.5, 0.0]), torch.tensor([True, False, False, False]),
    ...                 torch.tensor([True, True, True, False]), [0.6, 0.7])
    tensor([False,  True, False, False])
    """
    pool = torch.tensor(list(right_b) + b[correct.bool()].tolist(), dtype=torch.float32)
    return ~correct.bool() & judged.bool() & (b.float() >= pool.quantile(0.5)) if pool.numel() else None

# ----------------------------------------------------------------------------------------------------
# Flags: every knob in one place. Pairs of defaults are (tiny model on its own task, LLM on GSM8K).

HERE = Path(__file__).resolve().parent
TINY_TASK, TINY_MAX_PARAMS = HERE / "tiny_task", 50_000_000
TINY_DATA = (str(TINY_TASK / "train.jsonl"), str(TINY_TASK / "test.jsonl"))
FLAGS = [  # (group, flag, type or choices, default or (tiny default, LLM default), help, check)
    ("model", "--model", str, str(TINY_TASK / "model"), "local folder or hub id", None),
    ("model", "--device", str, "auto", "auto | cpu | cuda | cuda:N", None),
    ("model", "--dtype", ["auto", "fp32", "bf16"], "auto", "bf16 autocast (auto: on cuda)", None),
    ("model", "--chat", bool, False, "wrap prompts in the tokenizer's chat template", None),
    ("data", "--data", str, (TINY_DATA[0], "gsm8k"), "train prompts: a JSONL file or `gsm8k`", None),
    ("data", "--eval-data", str, (TINY_DATA[1], "gsm8k"), "eval problems: a JSONL file or `gsm8k`", None),
    ("data", "--eval-size", int, (0, 500), "eval problems (0: all)", ">= 0"),
    ("data", "--eval-every", int, (20, 25), "steps between evals", ">= 1"),
    ("data", "--eval-samples", int, 0, "K > 0: also sampled pass@1, K samples per problem", ">= 0"),
    ("data", "--eval-batch", int, (256, 64), "rows per eval batch (problems x samples)", ">= 1"),
    ("rollouts", "--steps", int, (60, 200), "policy updates", ">= 1"),
    ("rollouts", "--prompts-per-step", int, (16, 16), "P: prompts per step", ">= 1"),
    ("rollouts", "--group-size", int, 8, "G: rollouts per prompt (GRPO needs a group to compare)", ">= 2"),
    ("rollouts", "--max-new-tokens", int, (64, 512), "completion length cap", ">= 1"),
    ("rollouts", "--temperature", float, 1.0, "sampling temperature", "> 0"),
    ("rewards", "--mode", ["progrs", "outcome", "absolute", "progrs-strict"], "progrs",
     "progrs: A_out + lam*c | outcome: plain GRPO | absolute: r + lam*b | progrs-strict", None),
    ("rewards", "--lam", float, 1.0, "weight of the centered bonus c", ">= 0"),
    ("rewards", "--prm", str, "toy", "toy | a PRM folder | a hub id", None),
    ("rewards", "--prm-quantile", float, None, "PRM quantile to read (None: its config's, or lowest)", None),
    ("rewards", "--prm-tag", str, None, "causal-LM PRM: the step tag (None: its config's, else ки)", None),
    ("rewards", "--prm-tokens", str, None, "causal-LM PRM: good,bad tokens (None: config's, or +,-)", None),
    ("rewards", "--lam-var", float, 1.0, "coherence volatility penalty", ">= 0"),
    ("optimisation", "--lr", float, (1e-4, 1e-6), "AdamW learning rate", "> 0"),
    ("optimisation", "--warmup-steps", int, 10, "linear learning-rate warmup", ">= 0"),
    ("optimisation", "--micro-batch", int, (128, 8), "sequences per forward/backward", ">= 1"),
    ("optimisation", "--ppo-epochs", int, 1, "updates per batch (> 1: clipped ratio)", ">= 1"),
    ("optimisation", "--kl-coef", float, 0.0, "k3 KL to the initial model (0: off)", ">= 0"),
    ("optimisation", "--max-grad-norm", float, 1.0, "gradient clipping", "> 0"),
    ("logging", "--out", str, "out", "metrics.jsonl, config.json and model/ go here", None),
    ("logging", "--save-every", int, None, "steps between checkpoints (None: --eval-every)", ">= 1"),
    ("logging", "--seed", int, 0, "same seed, same CPU: same numbers", None),
]
SIZE_DEFAULTS = {size: {f[1][2:].replace("-", "_"): f[3][i] for f in FLAGS if isinstance(f[3], tuple)}
                 for i, size in enumerate(("tiny", "llm"))}

class ProgrsError(Exception): pass  # bad input: main() prints the message as one line, exits non-zero

def first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="PROGRS: GRPO with outcome-conditioned process rewards.")
    p.error, groups = lambda message: p.exit(2, f"progrs.py: error: {message}\n"), {}  # one line, no usage
    for group, flag, kind, default, help, _ in FLAGS:
        shown = " tiny / ".join(map(str, default)) + " LLM" if isinstance(default, tuple) else default
        kw = dict(action="store_true") if kind is bool else dict(choices=kind) if isinstance(kind, list) \
            else dict(type=kind)
        g = groups.get(group) or groups.setdefault(group, p.add_argument_group(group))
        g.add_argument(flag, default=None if isinstance(default, tuple) else default,
                       help=f"{help} (default: {str(shown).replace(str(HERE) + os.sep, '')})", **kw)
    return p

def check_args(args) -> None:  # one line naming the flag, before anything trains silently wrong
    for _, flag, kind, _, _, rule in FLAGS:
        x = getattr(args, flag[2:].replace("-", "_"))
        if x is not None and kind is float and not math.isfinite(x):  # first: inf passes every range
            raise ProgrsError(f"{flag}: expected a finite number, got {x}")
        op, bound = rule.split() if rule else (None, None)
        if op and x is not None and not (x >= float(bound) if op == ">=" else x > float(bound)):
            raise ProgrsError(f"{flag}: expected a value {rule}, got {x}")

# ----------------------------------------------------------------------------------------------------
# Data: JSONL records {"question", "answer"}, the answer bare or a GSM8K rationale ending "#### N".

MAX_CHARS = 20_000  # per question or answer: GSM8K's longest is under 1,000

def parse_gold(answer: str) -> str:
    return answer.rsplit("####", 1)[1].strip() if "####" in answer else answer.strip()

def load_problems(path) -> list[dict]:  # [{"question", "gold"}]
    path, problems, expected = Path(path), [], "expected JSONL with 'question' and 'answer'"
    if not path.is_file(): raise ProgrsError(f"{path}: no such data file ({expected})")
    try:  # split("\n"), not splitlines(): a JSON string may hold U+2028, which is no line end in JSONL
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ProgrsError(f"{path}: not UTF-8 text (byte {e.start}); {expected}") from None
    for lineno, line in ((i, x) for i, x in enumerate(lines, 1) if x.strip()):
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
            problem = f"a question or answer over {MAX_CHARS:,} characters ({max(len(q), len(str(a))):,})"
        elif not q.strip() or not parse_gold(str(a)):
            problem = "empty 'question' or empty final answer"
        else:
            problems.append({"question": q.strip(), "gold": parse_gold(str(a))})
            continue
        raise ProgrsError(f"{path}:{lineno}: {problem}")
    if problems: return problems
    raise ProgrsError(f"{path}: no records ({expected})")

# GSM8K by name: the original release's splits (MIT licence), downloaded once into PROGRS_CACHE (default
# ~/.cache/progrs) and pinned by line count and sha256; PROGRS_GSM8K_URL names a mirror.
GSM8K_URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data"
GSM8K_SPLITS = {"train": (7473, "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"),
                "test": (1319, "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14")}

def load_data(value: str, split: str, flag: str) -> list[dict]:
    import urllib.request
    path = Path(os.environ.get("PROGRS_CACHE") or Path.home() / ".cache" / "progrs") / f"gsm8k_{split}.jsonl"
    if value != "gsm8k" or path.is_file():  # a cached split was checked before it was written
        return load_problems(path if value == "gsm8k" else value)
    url = f"{os.environ.get('PROGRS_GSM8K_URL', GSM8K_URL).rstrip('/')}/{split}.jsonl"
    hint = f"pass a local copy instead: {flag} path/to/gsm8k_{split}.jsonl"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
    except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
        raise ProgrsError(f"{flag} gsm8k: could not download {url} ({first_line(getattr(e, 'reason', e))}); "
                          f"{hint}") from None
    (lines, sha), got = GSM8K_SPLITS[split], (data.count(b"\n"), hashlib.sha256(data).hexdigest())
    if got != (lines, sha):
        raise ProgrsError(f"{flag} gsm8k: {url} is not the pinned GSM8K {split} split ({got[0]} lines, "
                          f"sha256 {got[1][:12]}...; expected {lines}, {sha[:12]}...); {hint}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".part").write_bytes(data)
    path.with_suffix(".part").replace(path)  # atomic: never half a file in the cache
    return load_problems(path)

# One prompt for rollouts, evaluation and the tiny model's warm start (build_model.py imports it).
INSTRUCTION = "Solve the problem. Write one step per line, then a last line 'Answer: <answer>'."

def build_prompt(question: str, tokenizer=None, chat: bool = False) -> str:
    """Plain: INSTRUCTION / "Question: ..." / "Solution:". chat=True: the tokenizer's chat template."""
    if not chat: return f"{INSTRUCTION}\nQuestion: {question}\nSolution:\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ProgrsError("--chat: this tokenizer has no chat template (drop --chat for a base model)")
    messages = [{"role": "user", "content": f"{INSTRUCTION}\n{question}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

# ----------------------------------------------------------------------------------------------------
# Rollouts: one batched, KV-cached generate() per step for P prompts x G samples, left-padded.
# On-policy: generate() gets a config holding only our settings, swapped in for the model's own, which
# would fill the rest (a hub model's top_k, repetition_penalty). Rows stop after the answer line (the
# verifier's rule, next) or at EOS; the mask keeps EOS and is built from positions, not `token == pad`.

def completion_mask(completions: torch.Tensor, eos_ids: list[int], stopped_at=None):
    """(B, T) tokens -> (mask, truncated): a row ends at its first EOS (kept) or stopped_at[row] (0: none)."""
    B, T = completions.shape
    is_eos = torch.isin(completions, torch.tensor(eos_ids, device=completions.device))   # (B, T)
    has_eos = is_eos.any(1)                                                              # (B,)
    length = torch.where(has_eos, is_eos.int().argmax(1) + 1, T)                         # (B,)
    stopped = (torch.zeros(B, dtype=torch.long) if stopped_at is None else stopped_at).to(completions.device)
    length = torch.where(stopped > 0, torch.minimum(length, stopped), length)           # (B,)
    mask = torch.arange(T, device=completions.device)[None, :] < length[:, None]        # (B, T)
    return mask, ~has_eos & (stopped == 0)

@functools.lru_cache(maxsize=8)
def newline_tokens(tokenizer) -> torch.Tensor:
    """(V,) bool: the token ids whose text holds a newline, the only places an answer line can end."""
    return torch.tensor(["\n" in t for t in tokenizer.batch_decode([[i] for i in range(len(tokenizer))])])

class StopAtAnswer:
    """A row is done once its answer line ends (only rows ending in a newline are decoded and checked)."""
    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len, self.stopped = tokenizer, prompt_len, {}
        self.newline = newline_tokens(tokenizer)

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].cpu()                                                    # (B,)
        ends_line = (last < len(self.newline)) & self.newline[last.clamp(max=len(self.newline) - 1)]
        for row in ends_line.nonzero().flatten().tolist():
            found = None if row in self.stopped else find_answer(
                self.tokenizer.decode(input_ids[row, self.prompt_len:], skip_special_tokens=True))
            if found is not None and found.ended: self.stopped[row] = input_ids.shape[1] - self.prompt_len
        return torch.tensor([row in self.stopped for row in range(len(last))], device=input_ids.device)

@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int,
             temperature: float, amp, chat: bool = False) -> dict:
    """n samples per prompt (temperature 0: one greedy completion each); rows are prompt-major."""
    from transformers import GenerationConfig
    # a chat template already wrote the special tokens it needs: do not add them a second time
    enc = tokenizer(prompts, return_tensors="pt", padding=True,
                    add_special_tokens=not chat).to(model.device)                # (P, Tp), left pad
    Tp, eos_ids = enc["input_ids"].shape[1], model.generation_config.eos_token_id
    eos_ids = sorted({tokenizer.eos_token_id, *([eos_ids] if isinstance(eos_ids, int) else eos_ids or [])})
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
        if temperature > 0 else dict(do_sample=False)
    config = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=n,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_ids, **sampling)
    stop = StopAtAnswer(tokenizer, Tp)
    shipped, model.generation_config = model.generation_config, config
    try:
        with amp():
            seqs = model.generate(**enc, generation_config=config, stopping_criteria=[stop])
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
# Verifier: exact match on the first committed answer
# A completion commits on its *answer line*: the first line that closes a \boxed{...} (braces matched)
# or holds "Answer:" (any case, **Answer:** too) or "####", then text. Decoding stops there, so what a
# base model writes next (an invented question and its "Answer: 7") is never judged or trained. No
# answer line -> r = 0, with no fallback to "the last number". A numeric gold matches an answer holding
# exactly one number of that value ("$1,234.00 dollars" == 1234; "5 or 6" never matches); any other gold
# is compared as a string without `$`, `*` and a trailing period. All linear in the text.

_ANSWER_MARK = re.compile(r"answer[*\s]{0,8}:|####", re.IGNORECASE)
_BOX_EVENT = re.compile(r"\\boxed\s*\{|[{}]")
_NUMBER = re.compile(r"(?<![0-9.])-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
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
            if m.group() != "{": open_at.append((m.end(), depth))
    return boxes

def find_answer(text: str) -> AnswerLine | None:
    """The completion's answer line (see the rule above), or None if it commits to nothing."""
    boxes, k, start = _closed_boxes(text), 0, 0
    while start <= len(text):
        nl = text.find("\n", start)
        end = len(text) if nl == -1 else nl
        j = k
        while j < len(boxes) and boxes[j][1] < end: j += 1    # boxes that close on this line
        answer, k = " ".join(text[a:c].strip() for a, c in boxes[k:j]), j
        if not answer:
            mark = _ANSWER_MARK.search(text, start, end)
            answer = text[mark.end():end].replace("*", "").strip() if mark else ""
        if answer: return AnswerLine(answer, start, end + (nl != -1), nl != -1)
        if nl == -1: return None
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

def answers_match(pred: str, gold: str) -> bool:
    """A numeric gold by value against the one number in pred; any other gold as a cleaned string."""
    g = gold.strip().replace("$", "").replace(",", "").rstrip(".")
    if _NUMBER.fullmatch(g):  # exactly one value in pred (repeats allowed), equal to the gold's
        return {Decimal(m.group().replace(",", "")) for m in _NUMBER.finditer(pred)} == {Decimal(g)}
    clean = lambda s: s.replace("$", "").replace("*", "").strip().removesuffix(".").strip()  # noqa: E731
    return clean(pred) == clean(gold)

def is_correct(completion: str, gold: str) -> bool:
    return (pred := extract_answer(completion)) is not None and answers_match(pred, gold)

# Steps: the non-empty lines before the answer line (the prompt asks for one step per line, as GSM8K
# writes them). Step counts are easy to hack with trivially valid steps: the trainer logs steps/answer.

def split_steps(completion: str) -> list[str]:
    found = find_answer(completion)
    body = completion if found is None else completion[:found.start]
    return [line.strip() for line in body.split("\n") if line.strip()]

# ----------------------------------------------------------------------------------------------------
# Toy PRM (frozen): a transparent rule behind a quantile-regression PRM's interface. Each step alone: false
# if an equation in it is false, true if one is true, else unjudged (NaN). p(sound) ~ Beta(1 + k, 1) if
# true, Beta(1, 1 + k) if false; q_tau is its quantile ("47 + 28 = 75": q_0.1 0.63, q_0.5 0.87, q_0.9
# 0.98; "75 - 19 = 55": 0.02, 0.13, 0.37). Its blind spot is a real PRM's too: a miscopied number or a
# solution that stops one operation early is all sound steps, a fluent failure. Left sides are at most
# MAX_EXPR characters of arithmetic before "=", so any string scores in linear time.

MAX_EXPR, MAX_DIGITS = 120, 15
_EXPR_CHARS = frozenset("0123456789.,+-–−*/×x÷()$ ")  # with the en dash and minus sign
_RHS = re.compile(rf"\s*\$?\s*(-?[0-9][0-9,]{{0,{2 * MAX_DIGITS}}}(?:\.[0-9]{{1,{MAX_DIGITS}}})?)(?![0-9])")
_RHS_GOES_ON = re.compile(r"[A-Za-z]*\s*[-–−+*/×÷%^(]|\s+[0-9]")
_TIMES = re.compile(r"(?<=[0-9)])\s*[x×]\s*(?=[0-9(])")    # "3 x 4", "3x4"; "3x + 4" is algebra
_THOUSANDS = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_ANNOTATION = re.compile(rf"<<([^<>=]{{1,{MAX_EXPR}}})=([^<>=]{{1,{2 * MAX_DIGITS}}})>>")
_BIN_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
            ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b if b else None}
_UN_OPS = {ast.USub: lambda v: -v, ast.UAdd: lambda v: v}

def safe_eval(expr: str, need_op: bool = False) -> float | None:
    """+ - * / ( ) over numbers, else None (x/0, inf, too long): ast.parse builds a tree, no eval()."""
    expr = _TIMES.sub("*", _THOUSANDS.sub("", expr)).replace("$", "").replace("÷", "/") \
        .replace("–", "-").replace("−", "-").strip()
    if not expr or len(expr) > MAX_EXPR or re.search(rf"[0-9]{{{MAX_DIGITS + 1}}}", expr): return None
    try:
        tree = ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if need_op and not isinstance(tree, ast.BinOp): return None

    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float): return float(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UN_OPS:
            v = walk(node.operand)
            return None if v is None else _UN_OPS[type(node.op)](v)
        ok = isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS
        a, b = (walk(node.left), walk(node.right)) if ok else (None, None)
        return None if a is None or b is None else _BIN_OPS[type(node.op)](a, b)
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
        if eq - i > MAX_EXPR: return None
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
        if rhs and lhs: pairs.append((lhs, rhs.group(1)))
    verdicts = [math.isclose(v, c, rel_tol=1e-6, abs_tol=1e-6) for v, c in
                ((safe_eval(lhs, need_op=True), safe_eval(rhs)) for lhs, rhs in pairs)
                if v is not None and c is not None]   # not checkable: no evidence either way
    return sum(verdicts), len(verdicts) - sum(verdicts)

class ToyPRM:
    """Every PRM has taus, default_tau, score(question, steps) -> (S, Q) quantiles and score_batch."""
    taus, default_tau = (0.1, 0.5, 0.9), None
    EVIDENCE = 4.0  # pseudo-counts a step's verdict adds to the uniform Beta(1, 1) prior

    def score(self, question: str, steps: list[str]) -> torch.Tensor:
        a = 1 + self.EVIDENCE
        true_step = [t ** (1 / a) for t in self.taus]           # Beta(a, 1): cdf x^a
        false_step = [1 - (1 - t) ** (1 / a) for t in self.taus]  # Beta(1, a): cdf 1 - (1 - x)^a
        unjudged = [math.nan] * len(self.taus)
        rows = []
        for n_true, n_false in map(check_equations, steps):
            rows.append(false_step if n_false else true_step if n_true else unjudged)
        return torch.tensor(rows, dtype=torch.float32).reshape(len(steps), len(self.taus))  # (S, Q)

    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        return [self.score(q, s) for q, s in zip(questions, steps)]

# ----------------------------------------------------------------------------------------------------
# Learned PRMs (frozen), behind the same interface, read at each step's last token: token classification
# with a quantile head (labels q0.1, q0.5, ...; quantiles that cannot cross) or a two-class head (p(good));
# or a causal LM at a step tag, p(good) / (p(good) + p(bad)) of the next token (Math-Shepherd: tag ки,
# tokens + and -; others from flags or the config's progrs_step_tag / progrs_step_tokens). A config may
# name the quantile to read (progrs_quantile); --prm-quantile wins.

STEP_SEP = "\n"
_TAU_LABEL = re.compile(r"q_?(0?\.[0-9]+)")
_GOOD_LABEL = re.compile(r"good|pos(itive)?|\+|correct|true|1", re.IGNORECASE)  # a whole label

def prm_inputs(tokenizer, question: str, steps: list[str], tag: str | None = None):
    """(ids, index of each step's last token); pieces are tokenised alone, so the ends are exact."""
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

def from_pretrained(flag: str, name: str, auto_class):
    """(config, tokenizer, model, loading info) from a local folder or the hub, the same path for both;
    auto_class(config) picks the Auto class. Any failure is one line naming the flag and the folder."""
    import transformers as tf
    path, hub_id = Path(name), re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith(".")
    problem = ("a file" if path.is_file() else "no such folder" if not path.exists() and not hub_id
               else "no config.json in this folder" if path.is_dir() and not (path / "config.json").is_file()
               else None)
    if problem:
        raise ProgrsError(f"{flag} {name}: {problem} (expected a hub id or a saved model's folder: "
                          "config.json, weights and tokenizer files)")
    try:  # fp32 master weights even for bf16 runs: bf16 weights would round away lr ~1e-6 updates
        config, tokenizer = tf.AutoConfig.from_pretrained(name), tf.AutoTokenizer.from_pretrained(name)
        model, info = auto_class(config).from_pretrained(name, dtype=torch.float32, output_loading_info=True)
    except Exception as e:  # whatever the library raises: no network, truncated weights, a head mismatch
        raise ProgrsError(f"{flag} {name}: could not load it ({first_line(e)})") from None
    if tokenizer.pad_token is None: tokenizer.pad_token = tokenizer.eos_token
    return config, tokenizer, model, info

class ModelPRM:
    def __init__(self, name: str, device, amp, tag=None, tokens=None, batch_size: int = 64):
        import transformers as tf
        causal = lambda c: bool(tag) or any(a.endswith("ForCausalLM") for a in c.architectures or [])
        config, self.tokenizer, self.model, info = from_pretrained("--prm", name, lambda c: (
            tf.AutoModelForCausalLM if causal(c) else tf.AutoModelForTokenClassification))
        self.causal = causal(config)
        self.default_tau, self.tag, self.good = getattr(config, "progrs_quantile", None), None, 0
        labels = [str(self.model.config.id2label[i]) for i in range(self.model.config.num_labels)]
        taus = [_TAU_LABEL.fullmatch(x) for x in labels]
        if self.causal:
            words = [tag or getattr(config, "progrs_step_tag", "ки"),
                     *(tokens.split(",") if tokens else getattr(config, "progrs_step_tokens", ["+", "-"]))]
            ids = [self.tokenizer.encode(w, add_special_tokens=False) for w in words]
            if len(ids) != 3 or any(len(i) != 1 for i in ids):
                raise ProgrsError(f"--prm-tag / --prm-tokens: {words} must each be one token of --prm "
                                  f"{name}'s tokenizer (Math-Shepherd's: ки, +, -)")
            self.tag, pair = words[0], [i[0] for i in ids[1:]]
            self.kind, self.taus, self.read = "step-tag", (0.5,), lambda z: z[:, pair].softmax(-1)[:, :1]
        elif set(info["missing_keys"]) - {n for n, _ in self.model.base_model.named_parameters(
                prefix=self.model.base_model_prefix)}:  # from_pretrained would make up a random head
            raise ProgrsError(f"--prm {name}: this checkpoint has no classification head "
                              f"({', '.join(sorted(info['missing_keys']))} missing); expected a trained PRM")
        elif all(taus):
            self.kind, self.read = "quantile", quantiles_from_logits
            self.taus = tuple(float(m[1]) for m in taus)
            if list(self.taus) != sorted(set(self.taus)):
                raise ProgrsError(f"--prm {name}: quantile labels {labels} are not increasing taus")
        elif len(labels) == 2:
            self.good = ([i for i, x in enumerate(labels) if _GOOD_LABEL.fullmatch(x.replace("LABEL_", ""))]
                         or [1])[-1]
            self.kind, self.taus, self.read = "two-class", (0.5,), lambda z: z.softmax(-1)[:, [self.good]]
        else:
            raise ProgrsError(f"--prm {name}: expected a quantile head (labels q0.1, q0.5, ...) or a "
                              f"two-class head, got {len(labels)} outputs {labels[:6]}")
        self.model.to(device).eval().requires_grad_(False)
        self.device, self.amp, self.batch_size = device, amp, batch_size
        self.max_len = min(getattr(self.model.config, "max_position_embeddings", None) or 4096, 4096)

    @torch.no_grad()
    def score_batch(self, questions: list[str], steps: list[list[str]]) -> list[torch.Tensor]:
        """Each distinct (question, steps) once (groups repeat completions), in right-padded batches."""
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
# Loss and update
# Log-probs: fp32 logits / temperature (we sampled from softmax(logits / T)), position ids rebuilt from
# the mask as generate() builds them for left-padded rows. The loss is divided by N, the completion
# tokens of the *whole batch*, so micro-batching changes memory, never the gradient:
#     L = -(1/N) sum_i sum_t min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) [+ kl_coef * k3_it]
# With --ppo-epochs 1 the old log-probs are this pass's, detached: rho = 1, the clip never acts, and
# this is REINFORCE with group baselines. The logged loss is -(1/N) sum_i A_i len_i, a length-weighted
# sum of advantages (negative in --mode progrs, where right rollouts keep an uncentered bonus), not the
# gradient: watch accuracy. KL to the initial model (k3) is off by default: with verifiable rewards and
# few steps the policy drifts little, and a reference costs a second model.

PPO_CLIP = 0.2
LOGIT_BLOCK = 2 ** 26  # positions x vocabulary per block of fp32 logits: 256 MB, ~440 positions at 151,936

def _head_logprobs(hidden, targets, weight, bias, temperature: float):
    """(N, H) final hidden states, (N,) targets -> (N,) log-probs, with fp32 logits (N, V)."""
    logits = hidden.float() @ weight.float().T                                    # (N, V) fp32
    logits = (logits if bias is None else logits + bias.float()) / temperature
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)

def token_logprobs(model, input_ids, attention_mask, prompt_len: int, temperature: float, amp):
    """(B, Tp + T) -> (B, T) log pi(y_t | y_<t). The body runs under `amp`; the head in fp32, in blocks
    of LOGIT_BLOCK logits recomputed in the backward pass, so (B, T, V) logits never exist at once."""
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
    kl = None if ref_logp is None else torch.exp(ref_logp - logp) - (ref_logp - logp) - 1   # (b, T), >= 0
    per_token = per_token if kl is None else per_token + kl_coef * kl
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
# Training loop. Each step: P prompts -> G rollouts each -> verify (r) -> PRM step scores -> coherence
# (b) -> centering (c) -> advantages (A) -> one policy update; evaluations and checkpoints between.

def score_completions(problems: list[dict], texts: list[str], prm, q_index: int, lam_var: float) -> dict:
    """Verify and PRM-score completions (one problem per text). Nothing a model writes stops a run: text
    that makes verification raise is judged wrong with no steps (b = 0) and counted in `unscorable`."""
    out = {k: [] for k in ("correct", "b", "step_scores", "n_steps", "trace_error", "unscorable", "judged")}
    steps = []
    for prob, text in zip(problems, texts):
        try:
            s, ok = split_steps(text), is_correct(text, prob["gold"])
            # a right answer reached through at least one false equation (the verifier cannot see it)
            trace, bad = ok and any(check_equations(x)[1] > 0 for x in s), False
        except Exception:
            s, ok, trace, bad = [], False, False, True
        for key, value in (("correct", ok), ("trace_error", trace), ("unscorable", bad), ("n_steps", len(s))):
            out[key].append(value)
        steps.append(s)
    for q in prm.score_batch([p["question"] for p in problems], steps):            # [(S_i, Q)]
        out["step_scores"].append(q[:, q_index].tolist())
        out["judged"].append(bool((~q[:, q_index].isnan()).any()))
        out["b"].append(coherence_score(q[:, q_index], lam_var=lam_var))
    return out

def rollout_step(model, tokenizer, problems: list[dict], args, prm, amp) -> dict:
    t0, (P, G) = time.perf_counter(), (len(problems), args.group_size)
    batch = generate(model, tokenizer, [build_prompt(p["question"], tokenizer, args.chat) for p in problems],
                     G, args.max_new_tokens, args.temperature, amp, args.chat)
    t1 = time.perf_counter()
    scored = score_completions([p for p in problems for _ in range(G)], batch["texts"], prm, args.q_index,
                               args.lam_var)                                      # prompt-major
    correct = torch.tensor(scored["correct"]).view(P, G)                          # (P, G)
    b = torch.tensor(scored["b"], dtype=torch.float32).view(P, G)                 # (P, G)
    adv, a_out, bonus = compute_advantages(correct, b, args.mode, args.lam)       # (P, G) each
    batch.update(scored, correct=correct, b_grid=b, adv=adv, a_out=a_out, bonus=bonus,
                 t_generate=t1 - t0, t_score=time.perf_counter() - t1)
    return batch

@torch.no_grad()
def evaluate(model, tokenizer, problems: list[dict], args, prm, amp, right_pool=()) -> dict:
    """Greedy pass@1, trace errors, steps per answer, b and fluent failures; the same over --eval-samples K
    samples per problem at the training temperature (sampled pass@1: what RL optimises)."""
    def complete(n, temperature):  # the problems' completions, n per problem, problem-major
        texts, chunk = [], max(1, args.eval_batch // n)
        for i in range(0, len(problems), chunk):
            prompts = [build_prompt(p["question"], tokenizer, args.chat) for p in problems[i:i + chunk]]
            texts += generate(model, tokenizer, prompts, n, args.max_new_tokens, temperature, amp,
                              args.chat)["texts"]
        return texts

    def summary(texts, n, prefix):
        s = score_completions([p for p in problems for _ in range(n)], texts, prm, args.q_index, args.lam_var)
        ff = fluent_failures(*(torch.tensor(s[k]) for k in ("b", "correct", "judged")), right_pool)
        n_right = sum(s["correct"])
        rates = dict(accuracy=n_right / len(texts), trace_error_rate=sum(s["trace_error"]) / max(n_right, 1),
                     steps_per_answer=float(np.mean(s["n_steps"])), process_score=float(np.mean(s["b"])),
                     fluent_failure_rate=None if ff is None else float(ff.float().mean()))
        return {prefix + k: v for k, v in rates.items()}

    texts = complete(1, 0.0)
    out = dict(summary(texts, 1, "eval_"), texts=texts)
    if args.eval_samples > 0:
        # its own seeded random stream: how often a run evaluates does not change its training
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(args.seed)
            sampled = complete(args.eval_samples, args.temperature)
            out.update(summary(sampled, args.eval_samples, "eval_sampled_"), sampled_texts=sampled)
    return out

def step_metrics(batch: dict, args, right_pool=None) -> dict:
    """One metrics line; marks batch["fluent"] (P, G) and adds the step's right b's to right_pool."""
    correct, b, bonus, adv = batch["correct"], batch["b_grid"], batch["bonus"], batch["adv"]
    ff = fluent_failures(b.flatten(), correct.flatten(), torch.tensor(batch["judged"]), right_pool or ())
    fluent = batch["fluent"] = torch.zeros_like(correct) if ff is None else ff.view_as(correct)  # (P, G)
    k, n_right = correct.sum(-1), int(correct.sum())
    push = torch.where((k == 0)[:, None], adv.clamp(min=0), 0.0)   # (P, G): A > 0 in all-wrong groups
    if right_pool is not None: right_pool.extend(b[correct].tolist())
    mean = lambda x: float(x.mean()) if x.numel() else None  # noqa: E731  (null: e.g. no right rollout)
    return dict(
        train_accuracy=n_right / correct.numel(), process_score=mean(b),
        process_score_correct=mean(b[correct]), process_score_incorrect=mean(b[~correct]),
        bonus_correct=mean(bonus[correct]),
        bonus_incorrect_abs=mean(bonus[~correct].abs()), groups_all_correct=int((k == args.group_size).sum()),
        groups_all_wrong=int((k == 0).sum()), dominance_violations=dominance_violations(adv, correct),
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
    for j, r in enumerate(range(i * G, (i + 1) * G)):
        steps = " ".join("  - " if math.isnan(s) else f"{s:.2f}" for s in batch["step_scores"][r][:6])
        text = batch["texts"][r].strip().replace("\n", " | ")
        text = text if len(text) <= width else text[:width - 3] + "..."
        ok = "yes" if correct[i, j] else ("no*" if fluent[i, j] else "no")
        lines.append(f"{ok:>3} {steps:<24} {batch['b_grid'][i, j]:5.2f} {batch['bonus'][i, j]:+6.2f} "
                     f"{batch['a_out'][i, j]:+6.2f} {batch['adv'][i, j]:+6.2f}  {text}")
    if fluent[i].any():
        lines.append("no* = fluent failure: wrong, yet b reaches the median b of recent right rollouts")
    return "\n".join(lines)

# A checkpoint is written whole beside OUT/model, then swapped in by two renames; a save killed midway
# can leave OUT/model.tmp or OUT/model.old behind, which prepare_out cleans up before any work.

def save_checkpoint(model, tokenizer, out_dir: Path, step: int) -> None:
    tmp, final, old = out_dir / "model.tmp", out_dir / "model", out_dir / "model.old"
    for d in (tmp, old): shutil.rmtree(d, ignore_errors=True)
    for part in (model, tokenizer): part.save_pretrained(tmp)
    (tmp / "progrs_step.json").write_text(json.dumps({"step": step}))
    if final.exists(): final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)

def prepare_out(out: str, log=print) -> None:
    """--out exists and is writable, and what an interrupted save left there is cleaned up."""
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # a run never starts work it cannot save
    except OSError as e:
        raise ProgrsError(f"--out {out}: cannot write there ({e.strerror or first_line(e)})") from None
    tmp, final, old = out_dir / "model.tmp", out_dir / "model", out_dir / "model.old"
    if old.is_dir() and not final.exists():  # killed between the two renames: old is the last whole model
        old.rename(final)
        log(f"{out}: restored model/ from model.old/, left by an interrupted checkpoint save")
    for d in (d for d in (tmp, old) if d.exists()):
        shutil.rmtree(d)
        log(f"{out}: removed {d.name}/, left by an interrupted checkpoint save")

def train(model, tokenizer, train_set, eval_set, args, amp, prm, log=print) -> dict:
    """The whole run: returns {"before": eval, "after": eval}, writes OUT/metrics.jsonl and OUT/model."""
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(vars(args), indent=2, default=str))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    # linear warmup: Adam's first steps move each weight by ~lr whatever its gradient, a jolt
    warmup = lambda i: min(1.0, (i + 1) / (args.warmup_steps + 1))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if args.kl_coef > 0 else None
    rng, right_pool = random.Random(args.seed), collections.deque(maxlen=FLUENT_POOL)  # epochs of shuffles

    order = (i for _ in itertools.count() for i in rng.sample(range(len(train_set)), len(train_set)))
    next_problems = lambda: [train_set[next(order)] for _ in range(args.prompts_per_step)]  # noqa: E731

    def write(rec, metrics_file):
        print(json.dumps({k: v for k, v in rec.items() if not k.endswith("texts")}), file=metrics_file,
              flush=True)

    def run_eval(step, metrics_file):
        t0 = time.perf_counter()
        ev = evaluate(model, tokenizer, eval_set, args, prm, amp, right_pool)
        write(dict(ev, step=step, t_eval=time.perf_counter() - t0), metrics_file)
        sampled = f", sampled pass@1 {ev.get('eval_sampled_accuracy', 0):.1%} ({args.eval_samples}/problem)"
        log(f"step {step}: greedy pass@1 {ev['eval_accuracy']:.1%} on {len(eval_set)} problems"
            f"{sampled if args.eval_samples else ''}, trace errors {ev['eval_trace_error_rate']:.1%} of "
            f"right answers, {ev['eval_steps_per_answer']:.2f} steps/answer")
        return ev

    with open(out_dir / "metrics.jsonl", "w") as mf:
        before = last = run_eval(0, mf)
        view = [train_set[0]]  # before any update there is no batch yet: sample one group to show
        log(teaching_view(rollout_step(model, tokenizer, view, args, prm, amp), view))
        for step in range(1, args.steps + 1):
            problems = next_problems()
            batch = rollout_step(model, tokenizer, problems, args, prm, amp)
            t0 = time.perf_counter()
            upd = update_policy(model, optimizer, batch, batch["adv"].flatten(), args, amp, ref_model)
            schedule.step()
            rec = dict(step=step, **step_metrics(batch, args, right_pool), **upd,
                       t_generate=batch["t_generate"], t_score=batch["t_score"],
                       t_update=time.perf_counter() - t0)
            write({k: v for k, v in rec.items() if k != "kl" or ref_model is not None}, mf)
            log(f"step {step}: train accuracy {rec['train_accuracy']:.2f}, b {rec['process_score']:.2f}, "
                f"fluent failures {rec['fluent_failure_rate'] or 0:.2f}, loss {rec['loss']:+.3f}")
            if step % args.eval_every == 0 or step == args.steps:
                last = run_eval(step, mf)
                log(teaching_view(batch, problems))
            if step % args.save_every == 0 or step == args.steps:
                save_checkpoint(model, tokenizer, out_dir, step)
    for key, name in (("eval_sampled_accuracy", "sampled"), ("eval_accuracy", "greedy")):  # greedy last
        if key in last:
            log(f"{name} pass@1: {before[key]:.1%} -> {last[key]:.1%} ({100 * (last[key] - before[key]):+.1f}"
                f" points), {len(eval_set)} problems, {args.steps} steps, mode {args.mode}, lam {args.lam}")
    return dict(before=before, after=last)

# ----------------------------------------------------------------------------------------------------
# Main: flags -> device and --out -> data -> model -> PRM -> train

def pick_device(args) -> tuple[torch.device, bool]:
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.suppress(RuntimeError):
        device = torch.device(name)
        if device.type == "cpu" or device.type == "cuda" and (device.index or 0) < torch.cuda.device_count():
            return device, args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    raise ProgrsError(f"--device {args.device}: not available on this machine (expected auto, cpu, or "
                      f"cuda:N with N < {torch.cuda.device_count()}, the CUDA devices here)")

def load_model(name: str, device: torch.device):
    from transformers import AutoModelForCausalLM
    _, tokenizer, model, _ = from_pretrained("--model", name, lambda config: AutoModelForCausalLM)
    tokenizer.padding_side = "left"  # generation appends on the right
    model.to(device).eval()
    with torch.no_grad():  # token_logprobs reads the head as a linear map of the last hidden state
        ids = torch.tensor([[0, 1, 2]], device=device)
        ref = model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None])
        if torch.allclose(token_logprobs(model, ids, torch.ones_like(ids), 1, 1.0, contextlib.nullcontext)
                          .flatten(), ref.flatten(), atol=1e-3): return model, tokenizer
    raise ProgrsError(f"--model {name}: its logits are not a linear head on the last hidden state")

def apply_size_defaults(args, n_params: int) -> str:
    size = "tiny" if n_params < TINY_MAX_PARAMS else "llm"
    for k, v in SIZE_DEFAULTS[size].items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))
    args.save_every = args.save_every or args.eval_every
    return size

def build_prm(args, device, amp):
    """--prm toy -> ToyPRM, else ModelPRM; sets args.q_index: --prm-quantile, the PRM's own, or lowest."""
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
    for seed in (random.seed, np.random.seed, torch.manual_seed): seed(args.seed)
    given = {f: load_data(getattr(args, f), split, f"--{f.replace('_', '-')}")  # fail before loading
             for f, split in (("data", "train"), ("eval_data", "test")) if getattr(args, f)}
    model, tokenizer = load_model(args.model, device)
    n_params = sum(p.numel() for p in model.parameters())
    size = apply_size_defaults(args, n_params)
    train_set = given.get("data") or load_data(args.data, "train", "--data")
    eval_set = given.get("eval_data") or load_data(args.eval_data, "test", "--eval-data")
    eval_set = eval_set[:args.eval_size or None]
    amp = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    prm = build_prm(args, device, amp)
    torch.manual_seed(args.seed)  # loading a PRM may draw random numbers (an untrained head)
    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters ({size} defaults) on {device}"
          f"{' (bf16 autocast)' if bf16 else ''}; {len(train_set)} train / {len(eval_set)} eval "
          f"problems; PRM {args.prm}, tau {args.prm_quantile}\n{json.dumps(vars(args), default=str)}")
    if args.mode == "progrs" and args.lam >= (bound := max_dominant_lam(args.group_size)):
        print(f"warning: --lam {args.lam} >= {bound:.2f}: with G={args.group_size} a wrong rollout with "
              "sound-looking steps can reach a right rollout's advantage", file=sys.stderr)
    return train(model, tokenizer, train_set, eval_set, args, amp, prm)

if __name__ == "__main__":
    try:
        main()
    except ProgrsError as e:
        sys.exit(f"progrs.py: error: {e}")
    except KeyboardInterrupt:
        sys.exit("progrs.py: interrupted; metrics so far are in OUT/metrics.jsonl and the last "
                 "checkpoint in OUT/model (its step in progrs_step.json)")
