"""How much an answer-line stop saves on a model that rambles: completion lengths before and after.

    python tiny_task/rambling.py          # about a minute on 2 CPU cores

The model is tiny_task/model with its EOS turned into a newline (a forward hook on the head gives
the newline token the probability of both and EOS none), so it can never stop by itself: after its
answer line it writes on to the token cap, as a base LLM does when it invents the next question.
The same prompts are sampled twice with the same seed: once with plain `model.generate` (no
answer-line stop: every row runs to the cap) and once with progrs.generate (each row stops at the
end of its answer line). Sampling draws the same random numbers for every row at every step in
both, so the second completions are prefixes of the first.
"""
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import progrs  # noqa: E402

N_PROMPTS, N_SAMPLES, MAX_NEW_TOKENS, SEED = 64, 4, 128, 0


def never_stops(tok):
    """A forward hook for the head: EOS's probability goes to the newline token."""
    eos, nl = tok.eos_token_id, tok("\n", add_special_tokens=False)["input_ids"][0]

    def hook(module, inputs, logits):
        logits = logits.clone()
        logits[..., nl] = torch.logaddexp(logits[..., nl], logits[..., eos])
        logits[..., eos] = -math.inf
        return logits
    return hook


def main():
    torch.set_num_threads(1)
    model, tok = progrs.load_model(str(HERE / "model"), torch.device("cpu"))
    model.lm_head.register_forward_hook(never_stops(tok))
    problems = progrs.load_problems(HERE / "test.jsonl")[:N_PROMPTS]
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    no_amp = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731

    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(SEED)
    seqs = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                          max_new_tokens=MAX_NEW_TOKENS, num_return_sequences=N_SAMPLES,
                          pad_token_id=tok.pad_token_id)
    before = [tok.decode(s, skip_special_tokens=True) for s in seqs[:, enc["input_ids"].shape[1]:]]
    torch.manual_seed(SEED)
    batch = progrs.generate(model, tok, prompts, N_SAMPLES, MAX_NEW_TOKENS, 1.0, no_amp)
    after = batch["texts"]

    golds = [p["gold"] for p in problems for _ in range(N_SAMPLES)]
    n_before = (seqs.shape[1] - enc["input_ids"].shape[1])
    n_after = batch["completion_mask"].sum(1).float()
    print(f"{len(after)} completions, cap {MAX_NEW_TOKENS} new tokens, a model that never emits EOS")
    print(f"mean completion tokens: {n_before} without the stop -> {n_after.mean():.1f} with it "
          f"({int(batch['truncated'].sum())} reached the cap without an answer line)")
    print(f"stopped completions are prefixes of the unstopped ones: "
          f"{sum(b.startswith(a) for a, b in zip(after, before))} / {len(after)}")
    print(f"right (first committed answer): {sum(map(progrs.is_correct, after, golds))} / {len(after)}; "
          f"the unstopped texts hold {sum(b.count('Answer:') for b in before) / len(before):.1f} "
          f"'Answer:' lines each on average")


if __name__ == "__main__":
    main()
