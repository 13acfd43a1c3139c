"""Text no model should write, scored the way the trainer scores a rollout: nothing may raise or hang.

    python tiny_task/adversarial.py          # scores the corpus and prints the slowest completions

The corpus (also run by test_progrs.py) holds huge and long numbers, 1e999, thousands of chained
terms, deep parentheses, unclosed \\boxed{ repeated, calculator annotations that never close, random
Unicode and binary junk. Each text goes through progrs.score_completions with the rule PRM, which
runs the verifier, the step splitter, the PRM and coherence.
"""
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import progrs  # noqa: E402


def corpus(seed: int = 0) -> dict[str, str]:
    """name -> text; deterministic."""
    rng = random.Random(seed)
    unicode_chars = [chr(c) for c in range(0x10FFFF) if not 0xD800 <= c < 0xE000]
    return {
        "huge result": "2 + 2 = 4" + "0" * 308,
        "huge operand": "9" * 5000 + " + 1 = 1" + "0" * 5000,
        "overflowing product": " * ".join(["999999999999999"] * 30) + " = 1",
        "1e999": "1e999 + 1 = 1e999\n1e999 * 1e999 = inf\nAnswer: 1e999",
        "chained terms": "+".join(["1"] * 3000) + " = 3000\nAnswer: 3000",
        "8,000 chars of 1+1+": "1+" * 4000,
        "deep parentheses": "(" * 3000 + "1" + ")" * 3000 + " + 1 = 2",
        "unclosed parentheses": "(" * 6000 + "1 + 1 = 2",
        "unclosed boxes": "\\boxed{" * 5000,
        "nested boxes": "\\boxed{" * 3000 + "7" + "}" * 3000,
        "unclosed annotations": "<<" * 5000 + "1+1=2",
        "many equals": "=" * 20000,
        "many short equations": "1+1=2 " * 5000,
        "many answer markers": "Answer:" * 5000,
        "answer of 10,000 digits": "Answer: " + "9" * 10000,
        "thousands commas": "Answer: " + ",".join(["999"] * 3000),
        "markdown storm": "*" * 20000 + "Answer" + "*" * 20000 + ":" + " 5",
        "10,000 newlines": "\n" * 10000 + "Answer: 5",
        "random unicode": "".join(rng.choice(unicode_chars) for _ in range(20000)),
        "binary junk": bytes(rng.randrange(256) for _ in range(20000)).decode("latin-1"),
        "division by zero": "7 / 0 = 3\n0 / 0 = 0\nAnswer: 0",
        "python injection": "__import__('os').system('true') + 1 = 2\nAnswer: 2",
        "empty": "",
    }


def score_all(texts: dict[str, str]) -> dict[str, tuple[float, dict]]:
    """name -> (seconds, the score_completions entry for that text)."""
    prm, out = progrs.ToyPRM(), {}
    for name, text in texts.items():
        t0 = time.perf_counter()
        s = progrs.score_completions([{"question": "What is 2 + 2?", "gold": "4"}], [text], prm, 0, 1.0)
        out[name] = (time.perf_counter() - t0, {k: v[0] for k, v in s.items()})
    return out


if __name__ == "__main__":
    texts = corpus()
    results = score_all(texts)
    print(f"{'text':<28} {'chars':>7} {'seconds':>8} {'steps':>6} {'b':>6} {'right':>6} {'unscorable':>10}")
    for name, (sec, s) in sorted(results.items(), key=lambda kv: -kv[1][0]):
        print(f"{name:<28} {len(texts[name]):>7} {sec:8.3f} {s['n_steps']:>6} {s['b']:6.2f} "
              f"{str(s['correct']):>6} {str(s['unscorable']):>10}")
    worst = max(results, key=lambda k: results[k][0])
    print(f"worst: {worst!r}, {results[worst][0]:.3f} s for {len(texts[worst])} characters")
