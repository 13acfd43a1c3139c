"""Multi-step integer arithmetic: the offline default task of progrs.py.

    python tiny_task/make_data.py        # writes tiny_task/train.jsonl and tiny_task/test.jsonl
    python tiny_task/make_data.py --ops 5 6 --name scarce   # train_scarce.jsonl, test_scarce.jsonl

A problem is `What is 12 + 17 - 9 + 6?`: 2 to 4 operations (+ or -) on operands 1..20. Every
intermediate result is kept within 0..99 (other draws are redrawn): no minus signs, at most two
digits per number. The ranges are small on purpose: a model of about a million parameters must
learn to copy the operands and do the arithmetic in a couple of minutes of CPU training (with
operands up to 99 and three-digit running sums it stays below 20% accuracy in that time).

--ops LO HI draws LO to HI operations instead (the scarce regime: longer chains than the warm start
was trained on), from its own seed, and --name NAME writes train_NAME.jsonl and test_NAME.jsonl; no
question of those files is in train.jsonl or test.jsonl.

Records are {"question": ..., "answer": "26"} with the bare final answer; train and test share no
question. The data depend only on SEED: rerunning the script rewrites the same files.

solution(question) gives the step-by-step text the tiny model is warm-started on:

    12 + 17 = 29
    29 - 9 = 20
    20 + 6 = 26
    Answer: 26
"""
import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
N_TRAIN, N_TEST = 5000, 500
MIN_OPS, MAX_OPS = 2, 4
MAX_OPERAND = 20
MAX_RESULT = 99


def parse(question: str) -> tuple[int, list[tuple[str, int]]]:
    """`What is 12 + 17 - 9?` -> (12, [("+", 17), ("-", 9)])."""
    toks = question.removeprefix("What is ").removesuffix("?").split()
    return int(toks[0]), [(op, int(n)) for op, n in zip(toks[1::2], toks[2::2])]


def steps(first: int, ops: list[tuple[str, int]]) -> list[tuple[int, str, int, int]]:
    """One (a, op, b, a op b) per operation, each starting from the previous result."""
    out, acc = [], first
    for op, n in ops:
        res = acc + n if op == "+" else acc - n
        out.append((acc, op, n, res))
        acc = res
    return out


def render(step_list: list[tuple[int, str, int, int]]) -> str:
    """Steps as text; the answer line is the last step's result."""
    lines = [f"{a} {op} {b} = {c}" for a, op, b, c in step_list]
    return "\n".join(lines + [f"Answer: {step_list[-1][3]}"])


def solution(question: str) -> str:
    return render(steps(*parse(question)))


def make_problem(rng: random.Random, min_ops: int = MIN_OPS, max_ops: int = MAX_OPS) -> tuple[str, int]:
    while True:  # redraw until every intermediate result is within 0..MAX_RESULT
        first = rng.randint(1, MAX_OPERAND)
        ops = [(rng.choice("+-"), rng.randint(1, MAX_OPERAND))
               for _ in range(rng.randint(min_ops, max_ops))]
        results = [c for *_, c in steps(first, ops)]
        if 0 <= min(results) and max(results) <= MAX_RESULT:
            question = f"What is {first} " + " ".join(f"{op} {n}" for op, n in ops) + "?"
            return question, results[-1]


def main():
    ap = argparse.ArgumentParser(description="Write the tiny task's train and test problems.")
    ap.add_argument("--ops", type=int, nargs=2, default=(MIN_OPS, MAX_OPS), metavar=("LO", "HI"),
                    help="operations per problem")
    ap.add_argument("--name", default="", help="write train_NAME.jsonl and test_NAME.jsonl")
    a = ap.parse_args()
    suffix = f"_{a.name}" if a.name else ""
    default = tuple(a.ops) == (MIN_OPS, MAX_OPS)
    rng = random.Random(SEED if default else SEED + 1000 * a.ops[0] + a.ops[1])
    taken = set()
    if not default:  # keep the other files' questions out (only possible where the op counts overlap)
        for name in ("train", "test"):
            taken |= {json.loads(x)["question"] for x in open(HERE / f"{name}.jsonl", encoding="utf-8")}
    problems = {}  # question -> answer; a dict drops repeats and keeps draw order
    while len(problems) < N_TEST + N_TRAIN:
        q, ans = make_problem(rng, *a.ops)
        if q not in taken:
            problems.setdefault(q, ans)
    items = list(problems.items())
    for name, part in ((f"test{suffix}", items[:N_TEST]), (f"train{suffix}", items[N_TEST:])):
        with open(HERE / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for q, a in part:
                f.write(json.dumps({"question": q, "answer": str(a)}) + "\n")
        print(f"wrote {len(part)} problems to {HERE / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
