"""Build the tiny model that `python progrs.py` trains by default, from nothing, on CPU.

    python tiny_task/make_data.py      # once: tiny_task/train.jsonl, tiny_task/test.jsonl
    python tiny_task/build_model.py    # about 3.5 minutes on 2 CPU cores: tiny_task/model/
    python tiny_task/build_model.py --p-hasty 0.85 --out tiny_task/model_sparse  # a more hasty habit
    python tiny_task/build_model.py --p-hasty P --p-stop-early S --out tiny_task/model_fluent
                                       # a fluent-failure habit: see "Stopping early" below
    python tiny_task/build_model.py --p-hasty P --late-hasty --data tiny_task/train_scarce.jsonl \
        --test-data tiny_task/test_scarce.jsonl --out tiny_task/model_scarce
                                       # the scarce-outcome regime: see "Hasty late" below

1. Tokenizer: byte-level BPE trained on the task's prompts and solutions, saved as a Qwen2Tokenizer
   (Qwen2's pre-tokenizer splits numbers into single digits). `<|endoftext|>` is eos and pad, as in
   Qwen2.5 base models.
2. Model: a Qwen2ForCausalLM of about 0.8M parameters, randomly initialised.
3. Supervised warm start on the train split: build_prompt(question) + solution + eos, loss on the
   solution tokens only, SFT_STEPS steps of AdamW, warmup then linear decay to zero.

Two solvers write the demonstrations (a deliberate choice: it is what gives RL room to work).
  careful:  one operation per line, `12 + 17 = 29`, `29 - 9 = 20`, ... (make_data.solution);
  hasty:    the whole chain on one line, `12 + 17 - 9 + 6 = 26`, which a model this small cannot
            compute reliably in one go.
The first CAREFUL_ONLY steps see careful solutions alone, long enough for the model to learn the
arithmetic (the training loss drops from about 0.11 to 0.04 between steps 900 and 1000); after that
half of the demonstrations are hasty, and the model picks up the habit. It ends converged, not
halfway through learning, and sits where RL has room: it still knows how to solve the problems
(greedy accuracy 97% when it writes one step per line) but chooses the hasty form on about half of
them (6% accurate). Choosing between behaviours the model already has is the kind of change
outcome-reward RL makes readily; the toy PRM sees the difference too, since a hasty chain that is
wrong is a false equation. (An earlier warm start with careful solutions only, stopped at 700 steps
while still learning, sat at 54% and every RL setting we tried lowered it.)

Demonstration slips, in careful solutions, at rates P_MISCOPY and P_MISRESULT:
  miscopy:   one number is copied wrong from the question (17 -> 18) and the arithmetic is then
             right, so every step is a true equation but the final answer is wrong;
  misresult: one intermediate result is miswritten (12 + 17 = 28) while the next step carries on
             from the true value 29, so the answer is right through a false step.
The warm-started model makes both kinds of mistake itself when it samples. A step-level PRM cannot
see the first kind and an outcome reward cannot see the second: the RL stage needs both to exist.

Stopping early (--p-stop-early S, default 0: off): a share S of the careful demonstrations, at
every step of training, stops one operation early: every written step is a true equation, then an
`Answer:` line with the intermediate result, `12 + 17 = 29`, `29 - 9 = 20`, `Answer: 20` for
`What is 12 + 17 - 9 + 6?`. The model answers a neighbouring question fluently: the toy PRM judges
each of its steps sound, a learned PRM that reads the steps sees a right solution's prefix, and the
answer is wrong. Whether to stop is a decision the policy makes at the last operation, so RL can make
it more or less frequent; it sits beside right careful solutions and hasty ones. This builds the
fluent-failure regime (tiny_task/model_fluent). With S = 0 no extra random number is drawn, so the
default build is unchanged.

Hasty late (--late-hasty, default off): a hasty demonstration first writes k operations one per
line, k drawn uniformly from 0 .. n - 2, then the remaining ones (at least two) on one line:
`12 + 17 = 29`, `29 - 9 + 6 = 26`. On the longer chains of train_scarce.jsonl (5 or 6 operations,
make_data.py --ops 5 6 --name scarce) the one-line tail is mostly wrong, so right answers are scarce,
and the toy PRM's b grows with the number of sound steps written before it: partial progress that an
outcome reward cannot see. --data and --test-data name the problems the warm start trains and is
evaluated on (default train.jsonl and test.jsonl). With the flag off no extra random number is drawn.

Everything is seeded and the step count is fixed, so two builds on one machine give the same weights
(floating-point sums depend on the CPU: another machine may build slightly different ones).
"""
import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from make_data import MAX_RESULT, parse, render, steps  # noqa: E402
from progrs import (ToyPRM, build_prompt, check_equations, generate, load_problems,  # noqa: E402
                    score_completions, split_steps)

SEED = 0
OUT = HERE / "model"
VOCAB_SIZE = 400            # upper bound: the BPE runs out of merges on this small corpus first
P_MISCOPY, P_MISRESULT = 0.08, 0.08
P_HASTY, CAREFUL_ONLY = 0.5, 1100   # hasty share of demonstrations after the first CAREFUL_ONLY steps
HIDDEN, LAYERS, INTERMEDIATE = 128, 4, 384
SFT_STEPS, BATCH, LR, WARMUP = 1500, 32, 2e-3, 50
EVAL_BATCH, MAX_NEW_TOKENS = 100, 64


def no_amp():
    return torch.autocast("cpu", enabled=False)


def hasty(question: str, careful: int = 0) -> str:
    """`12 + 17 - 9 + 6 = 26` then the answer line: the right answer, but no working shown. With
    careful = k the first k operations are written one per line first, then the rest on one line:
    `12 + 17 = 29`, `29 - 9 + 6 = 26`."""
    first, ops = parse(question)
    s = steps(first, ops)
    answer = s[-1][3]
    start = s[careful - 1][3] if careful else first
    chain = " ".join([str(start)] + [f"{op} {n}" for op, n in ops[careful:]])
    lines = [f"{a} {op} {b} = {c}" for a, op, b, c in s[:careful]]
    return "\n".join(lines + [f"{chain} = {answer}", f"Answer: {answer}"])


def is_hasty(completion: str) -> bool:
    """A completion whose first step holds more than one operation."""
    s = split_steps(completion)
    return bool(s) and len(re.findall(r"[-+]", s[0].split("=")[0])) > 1


def stopped_early(question: str, completion: str) -> bool:
    """A completion whose steps are exactly the right solution's but the last, answered there."""
    first, ops = parse(question)
    return completion.strip() == render(steps(first, ops)[:-1])


def demonstration(question: str, rng: random.Random, p_hasty: float, p_stop: float = 0.0,
                  late_hasty: bool = False) -> str:
    """The solution text for one warm-start example: hasty with probability p_hasty (late_hasty: after
    0 .. n - 2 careful steps, drawn uniformly), else careful: stopped one operation early with
    probability p_stop, else with a slip at rates P_MISCOPY, P_MISRESULT."""
    first, ops = parse(question)
    if rng.random() < p_hasty:
        # no draw at all when late_hasty is off: the default build is unchanged
        return hasty(question, rng.randrange(len(ops) - 1) if late_hasty else 0)
    if p_stop > 0 and rng.random() < p_stop:  # no draw at all when off: the default build is unchanged
        return render(steps(first, ops)[:-1])
    r = rng.random()
    if r < P_MISCOPY:
        while True:  # miscopy one number by one; redraw if a result would leave 0..MAX_RESULT
            k, d = rng.randrange(len(ops) + 1), rng.choice((-1, 1))
            f, o = first, list(ops)
            if k == 0:
                f = max(1, f + d)
            else:
                o[k - 1] = (o[k - 1][0], max(1, o[k - 1][1] + d))
            s = steps(f, o)
            if 0 <= min(c for *_, c in s) and max(c for *_, c in s) <= MAX_RESULT:
                return render(s)
    s = steps(first, ops)
    if r < P_MISCOPY + P_MISRESULT:
        k = rng.randrange(len(s) - 1)  # never the last step: the answer line stays right
        a, op, b, c = s[k]
        s[k] = (a, op, b, abs(c + rng.choice((-10, -1, 1, 10))))
    return render(s)


def build_tokenizer(questions) -> Qwen2Tokenizer:
    texts = [build_prompt(q) + render(steps(*parse(q))) for q in questions]
    return Qwen2Tokenizer().train_new_from_iterator(texts, vocab_size=VOCAB_SIZE)


def build_model(tok) -> Qwen2ForCausalLM:
    eos = tok.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=INTERMEDIATE, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    return model


def batch_tensors(tok, questions, rng, p_hasty, p_stop=0.0, late_hasty=False):
    """Right-padded prompt + demonstration + eos; labels are -100 outside the demonstration."""
    rows = []
    for q in questions:
        p = tok(build_prompt(q)).input_ids
        s = tok(demonstration(q, rng, p_hasty, p_stop, late_hasty)).input_ids + [tok.eos_token_id]
        rows.append((p + s, [-100] * len(p) + s))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, mask, labels


def sft(model, tok, questions, n_steps, on_step=None, p_hasty_late=P_HASTY, p_stop=0.0, late_hasty=False):
    rng = random.Random(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    # linear warmup, then linear decay to zero
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / WARMUP, (n_steps - i) / (n_steps - WARMUP)))
    model.train()
    for step in range(1, n_steps + 1):
        p_hasty = p_hasty_late if step > CAREFUL_ONLY else 0.0
        ids, mask, labels = batch_tensors(tok, rng.sample(questions, BATCH), rng, p_hasty, p_stop,
                                          late_hasty)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step:
            on_step(step, loss.item())
    model.eval()


def evaluate(model, tok, problems, temperature=0.0) -> dict:
    """Accuracy (greedy at temperature 0, else one sample per problem), accuracy per solver style,
    and the two kinds of mistake the RL stage needs, with progrs.py's own generate, verifier and
    equation checker."""
    tok.padding_side = "left"
    texts = []
    for i in range(0, len(problems), EVAL_BATCH):
        prompts = [build_prompt(p["question"]) for p in problems[i:i + EVAL_BATCH]]
        texts += generate(model, tok, prompts, 1, MAX_NEW_TOKENS, temperature, no_amp)["texts"]
    tok.padding_side = "right"
    scored = score_completions(problems, texts, ToyPRM(), 0, 1.0)  # progrs.py's verifier and PRM
    correct = scored["correct"]
    wrong = [[check_equations(s) for s in split_steps(t)] for t, ok in zip(texts, correct) if not ok]
    hasty_ok = [ok for t, ok in zip(texts, correct) if is_hasty(t)]
    early = [stopped_early(p["question"], t) for p, t in zip(problems, texts)]
    careful_ok = [ok for t, ok in zip(texts, correct) if not is_hasty(t)]
    return {
        "accuracy": sum(correct) / len(problems),
        "hasty_share": len(hasty_ok) / len(problems),
        "hasty_accuracy": sum(hasty_ok) / max(1, len(hasty_ok)),
        "careful_accuracy": sum(careful_ok) / max(1, len(careful_ok)),
        # correct answers reached through at least one false step
        "correct_with_false_step": sum(scored["trace_error"]) / max(1, sum(correct)),
        # wrong answers whose every step is a true equation
        "wrong_with_all_true_steps": sum(bool(c) and all(t and not f for t, f in c) for c in wrong)
        / max(1, len(wrong)),
        "stopped_early": sum(early) / len(problems),
    }


def report(name: str, res: dict) -> None:
    print(f"{name}: accuracy {res['accuracy']:.1%}; hasty on {res['hasty_share']:.1%} of problems "
          f"({res['hasty_accuracy']:.1%} right), careful {res['careful_accuracy']:.1%} right; "
          f"{res['correct_with_false_step']:.1%} of right answers have a false step, "
          f"{res['wrong_with_all_true_steps']:.1%} of wrong ones have only true steps; "
          f"{res['stopped_early']:.1%} of all stop one operation early")


def main():
    ap = argparse.ArgumentParser(description="Build the tiny task's warm-start model.")
    ap.add_argument("--p-hasty", type=float, default=P_HASTY,
                    help="hasty share of demonstrations after the careful-only steps")
    ap.add_argument("--p-stop-early", type=float, default=0.0,
                    help="share of careful demonstrations that stop one operation early (0: off)")
    ap.add_argument("--late-hasty", action="store_true",
                    help="hasty demonstrations first write 0 .. n - 2 careful steps (drawn uniformly)")
    ap.add_argument("--data", type=Path, default=HERE / "train.jsonl", help="the warm start's problems")
    ap.add_argument("--test-data", type=Path, default=HERE / "test.jsonl", help="the problems it is "
                    "evaluated on")
    ap.add_argument("--out", type=Path, default=OUT, help="where the model is saved")
    a = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(SEED)
    questions = [p["question"] for p in load_problems(a.data)]
    test = load_problems(a.test_data)

    tok = build_tokenizer(questions)
    sample = build_prompt(questions[0]) + render(steps(*parse(questions[0])))
    assert tok.decode(tok(sample).input_ids) == sample, "tokenizer round trip failed"
    model = build_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tok)}, parameters {n_params:,}")

    sft(model, tok, questions, SFT_STEPS,
        lambda s, loss: s % 100 == 0 and print(f"step {s:4d}  loss {loss:.3f}", flush=True),
        a.p_hasty, a.p_stop_early, a.late_hasty)
    a.out.mkdir(exist_ok=True)
    model.save_pretrained(a.out)
    tok.save_pretrained(a.out)

    print(f"parameters {n_params:,}; {len(test)} test problems")
    report("greedy", evaluate(model, tok, test))
    torch.manual_seed(SEED)
    report("sampled at temperature 1 (what RL sees)", evaluate(model, tok, test, temperature=1.0))
    print(f"saved to {a.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
