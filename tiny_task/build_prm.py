"""Build the tiny task's learned PRM: a frozen quantile-regression PRM trained on Monte-Carlo labels.

    python tiny_task/build_prm.py   # after build_model.py; 3.5 minutes on 2 CPU cores: tiny_task/prm/
    python progrs.py --prm tiny_task/prm

1. Labels, as in Math-Shepherd and OmegaPRM: the warm start (tiny_task/model) writes one solution at
   temperature 1 for each of N_TRAIN_PROBLEMS = 800 train problems, hasty on about half of them, its
   natural mix. For each step prefix (prompt + the first k steps, 1,585 prefixes in all) it samples
   K = 16 continuations, and the prefix's label is the share of them whose full text, prefix steps +
   continuation, is_correct accepts: the policy's own chance of success from there. Sampling these
   25,000 continuations, and 12,600 for the held-out labels, takes about 2.5 of the 3.5 minutes.
2. Model: Qwen2ForTokenClassification with three outputs, id2label {0: "q0.1", 1: "q0.5", 2: "q0.9"},
   its body the warm start's and its head new (Hugging Face's dropout of 0.1 before the head, in
   training only). It reads progrs.prm_inputs(tokenizer, question, steps) at each step's last
   token, and progrs.quantiles_from_logits turns its three outputs into quantiles that cannot
   cross: the trainer's loader (progrs.ModelPRM) calls the same two functions, so both read the
   PRM alike.
3. Loss: the pinball loss at tau = 0.1, 0.5, 0.9 against the labels, averaged over steps; AdamW,
   TRAIN_STEPS = 300 steps of 32 solutions (about 12 passes over the 800), warmup then linear decay.
   In trial runs on labels like these, 1,000 steps of 16 solutions fitted the train labels better
   (pinball 0.042, against 0.054) and the held-out labels worse (0.062, against 0.057), and a
   learning rate of 3e-3 did no better than 1e-3.
4. Held out: labels made the same way on 394 prefixes of the first 200 test problems. The saved PRM,
   loaded by progrs.ModelPRM, the rule PRM (progrs.ToyPRM) and a constant (the train labels'
   quantiles) are scored on them: pinball loss, coverage, reliability and what each over-rates, as
   Markdown on stdout and in tiny_task/prm_report.md.

Label noise: the binomial std of a rate of 16 samples is at most 0.125 (at p = 0.5); most labels sit
near 0 or 1, where it is smaller, and it is 0.034 on average over the held-out labels. A second,
independent draw of 16 continuations moves a held-out label by 0.042 on average and by more than 0.25
on 0.8% of prefixes. The quantiles are of this 16-sample rate, not of the unknown success probability
behind it: the spread between q0.1 and q0.9 holds the binomial noise as well as the PRM's doubt.

What it learned (prm_report.md): the style, not the arithmetic. Hasty prefixes, almost all wrong, get
medians near 0 (0.02 on average), the two without a false equation included. Careful prefixes get about
0.9 whatever their work: with a false equation 0.85 against a label of 0.19 (22 of 29 over-rated by 0.5
or more), with only true equations but a miscopied operand or a wrongly carried value 0.91 against 0.23
(5 of 7), with a garbled step 0.90 against 0.00 (7 of 7). A policy that writes one tidy operation per
line earns a high score from it whether or not the numbers are right. The rule PRM catches a false
equation in the step it reads (9 of the 29 are over-rated by it, those whose false step came earlier)
and shares the miscopy blind spot (5 of 7).

Seeds for every stage, a fixed step count and THREADS = 2 threads: two builds on the same machine give
bit-identical files (`sha256sum tiny_task/prm/* tiny_task/prm_report.md`).
"""
import contextlib
import random
import re
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from build_model import is_hasty  # noqa: E402
from make_data import parse, render, steps as reference_steps  # noqa: E402
from progrs import ModelPRM, prm_inputs, quantiles_from_logits  # noqa: E402
from progrs import (ToyPRM, check_equations, completion_mask, is_correct, load_problems,  # noqa: E402
                    split_steps)

SEED = 0
THREADS = 2                 # float sums depend on the thread count; fixed so builds match bit for bit
POLICY, OUT, REPORT = HERE / "model", HERE / "prm", HERE / "prm_report.md"
# labels
N_TRAIN_PROBLEMS, N_TEST_PROBLEMS = 800, 200   # one sampled solution each
K = 16                      # continuations per prefix
MAX_NEW_TOKENS = 64
GEN_PREFIXES = 16           # prefixes per generate() call, K sequences each
# model and optimisation
TAUS = (0.1, 0.5, 0.9)
LABELS = {i: f"q{t}" for i, t in enumerate(TAUS)}
DEFAULT_TAU = 0.5          # written into config.json as progrs_quantile
TRAIN_STEPS, BATCH, LR, WARMUP, WEIGHT_DECAY = 300, 32, 1e-3, 30, 0.01
# report
BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
OVER = 0.5                  # over-rated: predicted median at least this far above the MC rate


# ----------------------------------------------------------------------------------------------------
# Labels

@torch.no_grad()
def sample(model, tok, rows: list[list[int]], n: int) -> list[str]:
    """n continuations of each token-id row at temperature 1, left-padded, prompt-major."""
    eos = tok.eos_token_id
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos)                                      # (R, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
    # explicit values win over the model's generation_config: the labels are the policy's own rates
    seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS,
                          num_return_sequences=n, do_sample=True, temperature=1.0, top_k=0,
                          top_p=1.0, repetition_penalty=1.0, eos_token_id=eos, pad_token_id=eos)
    completions = seqs[:, width:]                                                  # (R*n, T')
    keep, _ = completion_mask(completions, [eos])
    return [tok.decode(c[m], skip_special_tokens=True) for c, m in zip(completions, keep)]


def solve(model, tok, problems: list[dict]) -> list[list[str]]:
    """One sampled solution per problem, as its steps."""
    texts = []
    for i in range(0, len(problems), 100):
        rows = [prm_inputs(tok, p["question"], [])[0] for p in problems[i:i + 100]]
        texts += sample(model, tok, rows, 1)
    return [split_steps(t) for t in texts]


def n_ops(step: str) -> int:
    return len(re.findall(r"[-+]", step.split("=")[0]))


def mc_rates(model, tok, problems: list[dict], solutions: list[list[str]]) -> list[list[float]]:
    """For each solution, one Monte-Carlo success rate per step prefix, from K continuations."""
    prefixes = [(i, k) for i, s in enumerate(solutions) for k in range(1, len(s) + 1)]
    # prefixes with the same work left share a batch, so few rows wait for a long straggler
    left = {(i, k): len(parse(problems[i]["question"])[1]) - sum(map(n_ops, solutions[i][:k]))
            for i, k in prefixes}
    prefixes.sort(key=lambda ik: left[ik])
    rates = [[0.0] * len(s) for s in solutions]
    for j in range(0, len(prefixes), GEN_PREFIXES):
        chunk = prefixes[j:j + GEN_PREFIXES]
        rows = [prm_inputs(tok, problems[i]["question"], solutions[i][:k])[0] for i, k in chunk]
        conts = sample(model, tok, rows, K)
        for c, (i, k) in enumerate(chunk):
            head = "\n".join(solutions[i][:k]) + "\n"
            wins = sum(is_correct(head + t, problems[i]["gold"]) for t in conts[c * K:(c + 1) * K])
            rates[i][k - 1] = wins / K
    return rates


# ----------------------------------------------------------------------------------------------------
# Model

def batch_inputs(tok, items):
    """Right-padded prm_inputs of (question, steps) items: ids (B, T), mask (B, T), and the (row,
    position) of every step's last token, in item-then-step order."""
    enc = [prm_inputs(tok, q, s) for q, s in items]
    width = max(len(ids) for ids, _ in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    rows, cols = [], []
    for b, (x, ends) in enumerate(enc):
        ids[b, :len(x)], mask[b, :len(x)] = torch.tensor(x), 1
        rows += [b] * len(ends)
        cols += ends
    return ids, mask, torch.tensor(rows), torch.tensor(cols)


def read(prm, tok, items) -> torch.Tensor:
    """(N, Q) quantiles at every step of every item."""
    ids, mask, rows, cols = batch_inputs(tok, items)
    z = prm(input_ids=ids, attention_mask=mask).logits[rows, cols]                 # (N, Q)
    return quantiles_from_logits(z)


@torch.no_grad()
def predict(prm, tok, items, batch: int = 64) -> torch.Tensor:
    return torch.cat([read(prm, tok, items[i:i + batch]) for i in range(0, len(items), batch)])


def pinball(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, Q) quantiles, (N,) labels -> (Q,) mean pinball loss, one per tau."""
    taus = torch.tensor(TAUS)
    d = y[:, None] - q                                                             # (N, Q)
    return torch.maximum(taus * d, (taus - 1) * d).mean(0)


def train(prm, tok, items, rates):
    """Pinball loss on BATCH solutions per step (every step of each read at once), AdamW, warmup then
    linear decay to zero."""
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(prm.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / WARMUP, (TRAIN_STEPS - i) / (TRAIN_STEPS - WARMUP)))
    prm.train()
    for step in range(1, TRAIN_STEPS + 1):
        idx = rng.sample(range(len(items)), BATCH)
        y = torch.tensor([r for i in idx for r in rates[i]])                       # (N,)
        loss = pinball(read(prm, tok, [items[i] for i in idx]), y).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(prm.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"step {step:4d}  pinball {loss.item():.4f}", flush=True)
    prm.eval()


# ----------------------------------------------------------------------------------------------------
# Report

def kind(question: str, steps: list[str]) -> str:
    """What a prefix is: hasty (a chain on one line) or careful, and whether its work is sound."""
    eqs = [check_equations(s) for s in steps]
    false = any(f for _, f in eqs)
    if is_hasty("\n".join(steps)):
        return "hasty, a false equation" if false else "hasty, no false equation"
    if false:
        return "careful, a false equation"
    if not all(t for t, _ in eqs):
        return "careful, a step with no checkable equation"
    ref = render(reference_steps(*parse(question))).split("\n")
    if steps == ref[:len(steps)]:
        return "careful, the reference steps"
    return "careful, true equations off the reference"


def md_table(header: list[str], rows: list[list]) -> str:
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in fmt])


def over_rated(q50: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return q50 - y >= OVER


def report(data: dict, preds: dict, noise: dict) -> str:
    """The held-out comparison as Markdown: pinball loss, coverage, reliability, what is over-rated.
    The rule PRM gives no opinion (NaN) on a step with no checkable equation; it is scored on the
    prefixes it judges, and the learned PRM on those same prefixes too, for a like-for-like row."""
    y, kinds, ks = data["y"], data["kind"], data["k"]
    learned, rule = preds["learned"], preds["rule"]
    judged = ~rule.isnan().any(1)                                                  # (N,)
    every = torch.ones_like(judged)
    rows_of = [("learned", learned, every), ("constant", preds["constant"], every),
               ("rule", rule, judged), ("learned, same prefixes as rule", learned, judged)]
    out = [f"Held out: {len(y)} step prefixes of {data['n_problems']} test problems, one sampled "
           f"solution each (hasty on {data['hasty']:.0%} of them); label = success rate of K = {K} "
           f"continuations from the prefix. Label noise: the binomial std of a rate at K = {K} is at "
           f"most {0.5 / K ** 0.5:.3f} (p = 0.5) and {noise['std']:.3f} on average over these labels; "
           f"a second, independent draw of K continuations differs by {noise['diff']:.3f} on average, "
           f"and by more than 0.25 on {noise['far']:.1%} of prefixes. The constant PRM predicts the "
           f"train labels' quantiles everywhere. The rule PRM judges {int(judged.sum())} of the "
           f"{len(y)} prefixes (the others end in a step with no checkable equation).", ""]

    rows = []
    for name, q, m in rows_of:
        loss = pinball(q[m], y[m])
        rows.append([name, int(m.sum())] + loss.tolist() + [loss.mean().item()])
    out += ["(a) Mean pinball loss (lower is better).", "",
            md_table(["PRM", "prefixes", "tau 0.1", "tau 0.5", "tau 0.9", "mean"], rows), ""]

    rows = [[name] + [f"{(y[m] < q[m, j]).float().mean():.3f} / {(y[m] <= q[m, j]).float().mean():.3f}"
                      for j in range(len(TAUS))] for name, q, m in rows_of]
    out += ["(b) Coverage: share of labels below / at or below each predicted quantile. The labels "
            f"are multiples of 1/{K}, so for a calibrated tau-quantile the first share is at most tau "
            f"and the second at least tau. {(y == 0).float().mean():.0%} of them are exactly 0 and "
            f"{(y == 1).float().mean():.0%} exactly 1, while the learned quantiles lie strictly "
            "inside (0, 1) (quantiles_from_logits): those labels are always below its q0.1 and "
            "never at or below its q0.9.", "",
            md_table(["PRM"] + [f"q{t}" for t in TAUS], rows), ""]

    header, rows = ["predicted median"], []
    for name in ("learned", "rule"):
        header += [f"{name}: n", "mean q0.5", "mean label"]
    for lo, hi in zip(BINS, BINS[1:]):
        row = [f"[{lo:.1f}, {hi:.1f}{']' if hi == BINS[-1] else ')'}"]
        for q, m in ((learned, every), (rule, judged)):
            b = m & (q[:, 1] >= lo) & ((q[:, 1] < hi) | (hi == BINS[-1]))
            means = [q[b, 1].mean().item(), y[b].mean().item()] if b.any() else ["", ""]
            row += [int(b.sum())] + means
        rows.append(row)
    out += ["(c) Reliability: prefixes binned by predicted median.", "", md_table(header, rows), ""]

    groups = [(g, [x == g for x in kinds]) for g in sorted(set(kinds))]
    groups += [(f"{k} step{'s' * (k > 1)} written", [x == k for x in ks]) for k in sorted(set(ks))]
    rows = []
    for g, mask in groups:
        m = torch.tensor(mask)
        r = m & judged
        rows.append([g, int(m.sum()), y[m].mean().item(), learned[m, 1].mean().item(),
                     int(over_rated(learned[m, 1], y[m]).sum()), int(r.sum()),
                     rule[r, 1].mean().item() if r.any() else "",
                     int(over_rated(rule[r, 1], y[r]).sum())])
    out += [f"(d) Where each PRM over-rates: over-rated = predicted median at least {OVER} above the "
            "MC label. Kinds: hasty = the first step chains several operations; a false equation = in "
            "any step so far; the reference steps = those make_data.solution writes; off the "
            "reference = only true equations, but an operand miscopied or a wrong value carried. "
            "The rule PRM is read at the prefix's last step, which it judges alone.", "",
            md_table(["prefix", "n", "mean label", "learned q0.5", "learned over-rated",
                      "rule judged", "rule q0.5", "rule over-rated"], rows), ""]

    worst = sorted(range(len(y)), key=lambda i: (-(learned[i, 1] - y[i]).item(), i))[:5]
    rows = [[data["question"][i], " / ".join(data["steps"][i]), kinds[i], y[i].item(),
             learned[i, 1].item()] for i in worst]
    out += ["The learned PRM's five most over-rated prefixes.", "",
            md_table(["question", "steps so far", "kind", "MC label", "learned q0.5"], rows)]
    return "\n".join(out) + "\n"


def main():
    t0 = time.time()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    hf_logging.set_verbosity_error()  # quiet: from_pretrained reports the new head as missing
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(POLICY)
    policy = AutoModelForCausalLM.from_pretrained(POLICY).eval()
    train_set = random.Random(SEED).sample(load_problems(HERE / "train.jsonl"), N_TRAIN_PROBLEMS)
    test_set = load_problems(HERE / "test.jsonl")[:N_TEST_PROBLEMS]

    # one seed per stage, so resizing one stage leaves the others' samples as they were
    torch.manual_seed(SEED)
    train_sol = solve(policy, tok, train_set)
    train_rates = mc_rates(policy, tok, train_set, train_sol)
    torch.manual_seed(SEED + 1)
    test_sol = solve(policy, tok, test_set)
    test_rates = mc_rates(policy, tok, test_set, test_sol)
    torch.manual_seed(SEED + 2)
    test_rates_2 = mc_rates(policy, tok, test_set, test_sol)
    t_labels = time.time() - t0
    hasty = sum(is_hasty("\n".join(s)) for s in train_sol) / len(train_sol)
    print(f"labels: {sum(map(len, train_rates))} train prefixes of {len(train_set)} problems (hasty "
          f"on {hasty:.0%}), {sum(map(len, test_rates))} test prefixes of {len(test_set)}, K = {K}, "
          f"{t_labels:.0f}s", flush=True)

    torch.manual_seed(SEED)  # the new head's initial weights
    prm = AutoModelForTokenClassification.from_pretrained(
        POLICY, num_labels=len(TAUS), id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    prm.config.pad_token_id = tok.pad_token_id
    # the quantile progrs.py reads by default (--prm-quantile overrides): at the lowest, 0.1, the bonus
    # is about a tenth of the toy PRM's on the same rollouts and training is nearly outcome-only
    prm.config.progrs_quantile = DEFAULT_TAU
    train(prm, tok, [(p["question"], s) for p, s in zip(train_set, train_sol)], train_rates)
    OUT.mkdir(exist_ok=True)
    prm.save_pretrained(OUT)
    tok.save_pretrained(OUT)
    t_train = time.time() - t0 - t_labels

    # the held-out numbers come from the saved folder, read the way progrs.py --prm reads it
    questions = [p["question"] for p in test_set]
    saved = ModelPRM(str(OUT), torch.device("cpu"), contextlib.nullcontext, batch_size=64)
    learned = torch.cat(saved.score_batch(questions, test_sol))                    # (N, Q)
    assert saved.model.config.id2label == LABELS and saved.taus == TAUS, saved.model.config.id2label
    assert saved.default_tau == DEFAULT_TAU
    ids, mask, _, _ = batch_inputs(saved.tokenizer, list(zip(questions, test_sol))[:64])
    with torch.no_grad():
        same = torch.equal(saved.model(input_ids=ids, attention_mask=mask).logits,
                           prm(input_ids=ids, attention_mask=mask).logits)
    # the elementwise map may round differently in the last bit for other tensor shapes
    mine = predict(prm, tok, list(zip(questions, test_sol)))
    assert same and torch.allclose(learned, mine, rtol=0, atol=1e-6), \
        "the saved PRM reads differently from the trained one"

    y = torch.tensor([r for rs in test_rates for r in rs])                         # (N,)
    y2 = torch.tensor([r for rs in test_rates_2 for r in rs])                      # (N,)
    train_y = torch.tensor([r for rs in train_rates for r in rs])
    rule = torch.cat(ToyPRM().score_batch(questions, test_sol))                    # (N, Q)
    constant = torch.quantile(train_y, torch.tensor(TAUS)).expand(len(y), -1)     # (N, Q)
    prefixes = [(q, s[:k]) for q, s in zip(questions, test_sol) for k in range(1, len(s) + 1)]
    data = dict(y=y, n_problems=len(test_set), question=[q for q, _ in prefixes],
                steps=[s for _, s in prefixes], kind=[kind(q, s) for q, s in prefixes],
                k=[len(s) for _, s in prefixes],
                hasty=sum(is_hasty("\n".join(s)) for s in test_sol) / len(test_sol))
    noise = dict(std=(y * (1 - y) / K).sqrt().mean().item(), diff=(y - y2).abs().mean().item(),
                 far=((y - y2).abs() > 0.25).float().mean().item())
    text = report(data, {"learned": learned, "rule": rule, "constant": constant}, noise)
    print(text)
    REPORT.write_text(text, encoding="utf-8")
    n_bytes = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"saved to {OUT} ({n_bytes:,} bytes) and {REPORT}; labels {t_labels:.0f}s, training "
          f"{t_train:.0f}s, total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
