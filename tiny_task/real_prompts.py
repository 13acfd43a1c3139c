"""Which prompt does a real instruct model follow in the format the trainer scores? Candidates are compared
on the same problems with progrs's own generate(), score_completions() and ToyPRM (the verifier's and the
PRM's rules unchanged): share of completions with at least one judged step, steps per answer, accuracy,
truncation, answer formats. Greedy and --samples at --temperature. One JSON per candidate in --out, then a
markdown table on stdout.

    python tiny_task/real_prompts.py --model ~/.cache/progrs/qwen2.5-coder-0.5b-instruct \
        --data scratch/gsm8k_eval.jsonl --problems 30 --samples 2 --max-new-tokens 200

That command (53 min on one CPU thread) gave the table in tiny_task/real_weights.md. stray_endoftext counts
completions that hold <|endoftext|> inside their kept tokens: decoding went on past the end of text.
"""
import argparse, collections, functools, json, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import progrs  # noqa: E402

# Candidates. REWORDED asks for every calculation as a bare equation the toy PRM can check.
REWORDED = ("Solve the problem step by step. Write each calculation on its own line as an equation with "
            "numbers only, like 48 / 2 = 24. Then write a last line 'Answer: <number>'.")
SYSTEM = ("You are a careful math tutor. Solve each problem step by step: one calculation per line, written "
          "as an equation with numbers only (for example 48 / 2 = 24). End with a last line "
          "'Answer: <number>'.")
# the one-shot example is the first problem of the train split (Janet's ducks, gold 18), never evaluated
SHOT_QUESTION = ("Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
                 "bakes muffins for her friends every day with four. She sells the remainder at the farmers' "
                 "market daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
                 "farmers' market?")
SHOT_ANSWER = "Eggs left to sell: 16 - 3 - 4 = 9\nDollars per day: 9 * 2 = 18\nAnswer: 18"


def messages(name: str, question: str) -> list[dict] | None:
    """The chat turns of a candidate (None: the plain prompt, no chat template)."""
    if name == "chat_default":
        return [{"role": "user", "content": f"{progrs.INSTRUCTION}\n{question}"}]
    if name == "chat_reworded":
        return [{"role": "user", "content": f"{REWORDED}\n{question}"}]
    if name == "chat_system":
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    if name == "chat_one_shot":
        return [{"role": "user", "content": f"{REWORDED}\n{SHOT_QUESTION}"},
                {"role": "assistant", "content": SHOT_ANSWER},
                {"role": "user", "content": f"{REWORDED}\n{question}"}]
    if name == "plain_default":
        return None
    raise ValueError(name)


CANDIDATES = ["chat_reworded", "chat_one_shot", "chat_system", "chat_default", "plain_default"]


def prompt_text(name: str, question: str, tokenizer) -> tuple[str, bool]:
    turns = messages(name, question)
    if turns is None: return progrs.build_prompt(question, tokenizer, chat=False), False
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True), True


def answer_format(text: str) -> str:
    found = progrs.find_answer(text)
    if found is None: return "none"
    line = text[found.start:found.end]
    return "boxed" if "\\boxed" in line else "####" if "####" in line else "Answer:"


def run(model, tokenizer, problems, name, n, temperature, max_new_tokens, batch_rows, amp, prm):
    texts, truncated, tokens, stray_eot = [], [], [], 0
    chunk = max(1, batch_rows // n)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    t0 = time.perf_counter()
    for i in range(0, len(problems), chunk):
        pairs = [prompt_text(name, p["question"], tokenizer) for p in problems[i:i + chunk]]
        chat = pairs[0][1]
        prompts = [p for p, _ in pairs]
        out = progrs.generate(model, tokenizer, prompts, n, max_new_tokens, temperature, amp, chat)
        texts += out["texts"]
        truncated += out["truncated"].tolist()
        tokens += out["completion_mask"].sum(1).tolist()
        comp = out["input_ids"][:, out["prompt_len"]:]
        # <|endoftext|> inside a kept completion: a stop token the run's EOS set does not hold
        stray_eot += int(((comp == eot) & out["completion_mask"]).any(1).sum())
    seconds = time.perf_counter() - t0
    per = [p for p in problems for _ in range(n)]
    s = progrs.score_completions(per, texts, prm, prm.q_index, 1.0)
    judged_b = [b for b, j in zip(s["b"], s["judged"]) if j]
    lines_before = [len(progrs.split_steps(t)) for t in texts]
    return dict(
        rows=len(texts), seconds=round(seconds, 1), accuracy=sum(s["correct"]) / len(texts),
        judged_share=sum(s["judged"]) / len(texts), steps_per_answer=sum(s["n_steps"]) / len(texts),
        truncation_rate=sum(truncated) / len(texts), mean_tokens=sum(tokens) / len(tokens),
        formats=dict(collections.Counter(answer_format(t) for t in texts)),
        zero_step_share=sum(x == 0 for x in lines_before) / len(texts),
        b_mean=sum(s["b"]) / len(texts), b_judged_mean=(sum(judged_b) / len(judged_b)) if judged_b else None,
        b_right=_mean([b for b, c in zip(s["b"], s["correct"]) if c]),
        b_wrong=_mean([b for b, c in zip(s["b"], s["correct"]) if not c]),
        trace_errors=sum(s["trace_error"]), stray_endoftext=stray_eot,
        correct_per_problem=[sum(s["correct"][k * n:(k + 1) * n]) for k in range(len(problems))],
        texts=texts)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _mean(x):
    return sum(x) / len(x) if x else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="JSONL {question, answer}; the first --problems are used")
    ap.add_argument("--problems", type=int, default=50)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--batch-rows", type=int, default=64)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--out", default="out/prompts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = progrs.load_model(args.model, torch.device("cpu"))
    amp = functools.partial(torch.autocast, "cpu", enabled=False)
    prm = progrs.ToyPRM()
    problems = progrs.load_problems(args.data)[:args.problems]
    for name in args.candidates.split(","):
        rec = dict(candidate=name, example_prompt=prompt_text(name, problems[0]["question"], tokenizer)[0])
        rec["greedy"] = run(model, tokenizer, problems, name, 1, 0.0, args.max_new_tokens, args.batch_rows,
                            amp, prm)
        if args.samples:
            torch.manual_seed(args.seed)
            rec["sampled"] = run(model, tokenizer, problems, name, args.samples, args.temperature,
                                 args.max_new_tokens, args.batch_rows, amp, prm)
        (out / f"{name}.json").write_text(json.dumps(rec, indent=1))
        summary = {kind: {key: value for key, value in rec[kind].items()
                          if key not in ("texts", "correct_per_problem")}
                   for kind in ("greedy", "sampled") if kind in rec}
        print(name, json.dumps(summary), flush=True)
    table(out)


def table(out: Path):
    rows = ["| candidate | decoding | judged share | steps/answer | accuracy | truncated | answer formats | "
            "b right / wrong | s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in sorted(out.glob("*.json")):
        rec = json.loads(f.read_text())
        for kind in ("greedy", "sampled"):
            if kind not in rec: continue
            r = rec[kind]
            rows.append(f"| {rec['candidate']} | {kind} ({r['rows']}) | {r['judged_share']:.2f} | "
                        f"{r['steps_per_answer']:.2f} | {r['accuracy']:.2f} | {r['truncation_rate']:.2f} | "
                        f"{r['formats']} | {_fmt(r['b_right'])} / {_fmt(r['b_wrong'])} | {r['seconds']} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
