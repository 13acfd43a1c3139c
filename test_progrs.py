"""Tests for progrs.py: CPU only, a few minutes. Run: pytest test_progrs.py"""
import doctest
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import progrs
from progrs import (ToyPRM, check_equations, coherence_score, compute_advantages,
                    dominance_violations, extract_answer, group_normalize, is_correct,
                    load_problems, max_dominant_lam, outcome_conditioned_centering, split_steps)

HERE = Path(__file__).resolve().parent
TINY_MODEL = HERE / "tiny_task" / "model"
GSM8K = HERE.parent / "shared" / "data" / "gsm8k_test.jsonl"


# ----------------------------------------------------------------------------------------------------
# Centering: property tests over many random groups

def random_groups(n=4000, seed=0):
    """(P, G) scores and outcomes of every shape mix: all right, all wrong, one wrong, the rest."""
    g = torch.Generator().manual_seed(seed)
    G = 8
    scores = torch.rand(n, G, generator=g) * 4 - 2
    correct = torch.rand(n, G, generator=g) < torch.rand(n, 1, generator=g)
    correct[:50] = True                       # all-correct rows
    correct[50:100] = False                   # all-incorrect rows
    correct[100:150] = True
    correct[100:150, 3] = False               # exactly one incorrect rollout
    return scores, correct


def test_centering_incorrect_have_zero_mean_and_correct_unchanged():
    s, ok = random_groups()
    c = outcome_conditioned_centering(s, ok)
    wrong = ~ok
    n_wrong = wrong.sum(1)
    row_mean = torch.where(wrong, c, 0).sum(1) / n_wrong.clamp(min=1)
    assert torch.allclose(row_mean[n_wrong > 0], torch.zeros(int((n_wrong > 0).sum())), atol=1e-6)
    assert torch.equal(c[ok], s[ok])
    assert torch.equal(c[:50], s[:50])                          # no incorrect rollout: unchanged
    assert torch.equal(c[100:150, 3], torch.zeros(50))          # a single incorrect rollout: 0


def test_centering_preserves_order_among_incorrect():
    s, ok = random_groups()
    c = outcome_conditioned_centering(s, ok)
    for i in range(300, 800):
        w = ~ok[i]
        assert torch.equal(torch.argsort(s[i][w]), torch.argsort(c[i][w]))
        # centering is a shift: pairwise differences among incorrect rollouts are kept
        assert torch.allclose(c[i][w] - c[i][w][:1], s[i][w] - s[i][w][:1], atol=1e-6)


def test_centering_ignores_a_constant_added_to_incorrect_scores():
    s, ok = random_groups()
    shift = torch.randn(s.shape[0], 1, generator=torch.Generator().manual_seed(1)) * 10
    shifted = torch.where(ok, s, s + shift)
    assert torch.allclose(outcome_conditioned_centering(shifted, ok),
                          outcome_conditioned_centering(s, ok), atol=1e-5)


def test_centering_rows_independent_and_permutation_equivariant():
    s, ok = random_groups()
    c = outcome_conditioned_centering(s, ok)
    for i in (0, 60, 120, 500, 3999):                             # one row alone = that row in a batch
        assert torch.equal(outcome_conditioned_centering(s[i:i + 1], ok[i:i + 1])[0], c[i])
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(outcome_conditioned_centering(s[:, perm], ok[:, perm]), c[:, perm], atol=1e-6)


def test_centering_all_incorrect_row_is_plain_mean_centering():
    s = torch.tensor([[0.1, 0.5, 0.9]])
    c = outcome_conditioned_centering(s, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.allclose(c, torch.tensor([[-0.4, 0.0, 0.4]]), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_centering_keeps_dtype_shape_and_stays_finite(dtype):
    s, ok = random_groups(n=500)
    for scores in (s, s * 1e4, torch.zeros_like(s)):
        c = outcome_conditioned_centering(scores.to(dtype), ok)
        assert c.dtype == dtype and c.shape == s.shape and torch.isfinite(c).all()
    one_group = outcome_conditioned_centering(torch.tensor([0.3, 0.7, 0.2]).to(dtype),
                                              torch.tensor([1, 0, 0]))   # 1-D, 0/1 outcomes
    assert one_group.shape == (3,) and torch.isfinite(one_group).all()


def test_centering_is_copy_pasteable_with_torch_alone(tmp_path):
    """The function's source, pasted alone after `import torch`, runs and passes its doctest."""
    import inspect
    src = "import torch\n\n\n" + inspect.getsource(outcome_conditioned_centering)
    (tmp_path / "pasted.py").write_text(src)
    code = ("import doctest, pasted, sys; r = doctest.testmod(pasted); "
            "sys.exit(1 if r.failed or not r.attempted else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_doctests_in_progrs():
    result = doctest.testmod(progrs)
    assert result.attempted >= 2 and result.failed == 0


# ----------------------------------------------------------------------------------------------------
# Advantages

def test_uniform_rows_give_zero_outcome_advantage():
    r = torch.tensor([[1.0] * 4, [0.0] * 4])
    assert torch.equal(group_normalize(r), torch.zeros(2, 4))


def test_progrs_dominance_holds_for_default_lam_over_random_groups():
    lam = progrs.build_parser().get_default("lam")
    s, ok = random_groups()
    b = (s + 2) / 4                                           # process scores in [0, 1]
    assert lam < max_dominant_lam(8)
    adv, _, _ = compute_advantages(ok, b, "progrs", lam)
    assert dominance_violations(adv, ok) == 0
    # the worst case within the bound: one wrong rollout with b = 1 among wrong ones with b = 0
    ok2 = torch.tensor([[True, False, False, False, False, False, False, False]])
    b2 = torch.tensor([[0.0, 1.0, 0, 0, 0, 0, 0, 0]])
    assert dominance_violations(compute_advantages(ok2, b2, "progrs", lam)[0], ok2) == 0


def test_absolute_blend_can_put_a_wrong_answer_above_a_right_one():
    ok = torch.tensor([[True, False, False, False]])
    b = torch.tensor([[0.1, 0.9, 0.2, 0.2]])                  # right but shaky vs wrong but fluent
    adv_abs, _, _ = compute_advantages(ok, b, "absolute", 1.5)
    adv_pro, _, _ = compute_advantages(ok, b, "progrs", 1.5)
    assert adv_abs[0, 1] > adv_abs[0, 0] and dominance_violations(adv_abs, ok) == 1
    assert dominance_violations(adv_pro, ok) == 0


def test_all_incorrect_row_learns_only_from_centered_bonus():
    ok = torch.zeros(1, 4, dtype=torch.bool)
    b = torch.tensor([[0.2, 0.8, 0.5, 0.1]])
    adv, a_out, bonus = compute_advantages(ok, b, "progrs", 0.7)
    assert torch.equal(a_out, torch.zeros(1, 4))
    assert torch.allclose(adv, 0.7 * (b - b.mean()), atol=1e-6)
    assert torch.equal(compute_advantages(ok, b, "outcome", 0.7)[0], torch.zeros(1, 4))


def test_max_dominant_lam_is_tight():
    """Just under the bound no violation; just over it the worst-case group violates."""
    for G in (2, 4, 8, 16):
        bound = max_dominant_lam(G)
        worst = None
        for k in range(1, G - 1):                              # k right with b=0, one wrong with b=1
            ok = torch.tensor([[True] * k + [False] * (G - k)])
            b = torch.tensor([[0.0] * k + [1.0] + [0.0] * (G - k - 1)], dtype=torch.float64)
            if dominance_violations(compute_advantages(ok, b, "progrs", bound * 1.01)[0], ok):
                worst = k
            assert dominance_violations(compute_advantages(ok, b, "progrs", bound * 0.99)[0], ok) == 0
        assert G == 2 or worst is not None


# ----------------------------------------------------------------------------------------------------
# Verifier

@pytest.mark.parametrize("text,gold,expected", [
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}", True),        # nested braces
    ("\\boxed{3} then \\boxed{\\sqrt{16}}", "\\sqrt{16}", True),       # the last box wins
    ("1 + 1 = 2\nAnswer: 2", "2", True),
    ("Answer: 3\nAnswer: 4", "4", True),                              # the last answer line wins
    ("rationale\n#### 1,234", "1234", True),                          # thousands comma
    ("Answer: $18.", "18", True),                                     # $ and trailing period
    ("Answer: 72.0", "72", True),
    ("Answer: -3", "-3", True),
    ("Answer: 3", "-3", False),
    ("the answer is 72", "72", False),                                # no marker: no guessing
    ("Answer:", "72", False),
    ("Answer: seventy-two", "72", False),
    ("\\boxed{72", "72", False),                                      # unclosed box, no fallback
    ("Answer: banana", "banana", True),                               # non-numeric: string match
])
def test_is_correct(text, gold, expected):
    assert is_correct(text, gold) is expected


def test_extract_answer_none_on_garbage():
    for junk in ("", "\n\n", "}}{{", "\\boxed{", "12 + 3 = 15"):
        assert extract_answer(junk) is None


@pytest.mark.skipif(not GSM8K.exists(), reason=f"{GSM8K} not present (shared data is beside the checkout)")
def test_gsm8k_rationales_verify_against_their_own_answers_only():
    problems = load_problems(GSM8K)
    rationales = [json.loads(line)["answer"] for line in GSM8K.open()]
    assert len(problems) == len(rationales) == 1319
    assert all(is_correct(r, p["gold"]) for r, p in zip(rationales, problems))
    shifted = sum(is_correct(r, p["gold"]) for r, p in zip(rationales, problems[1:] + problems[:1]))
    assert shifted / len(problems) < 0.02


# ----------------------------------------------------------------------------------------------------
# Steps, PRM, coherence

def test_split_steps_drops_blank_lines_and_the_answer_line():
    text = "47 + 28 = 75\n\n75 - 19 = 56\nAnswer: 56\ntrailing"
    assert split_steps(text) == ["47 + 28 = 75", "75 - 19 = 56"]
    assert split_steps("a\nb") == ["a", "b"]                          # no answer: every line
    assert split_steps("Answer: 5") == []


def test_check_equations():
    assert check_equations("47 + 28 - 19 = 56") == (1, 0)
    assert check_equations("47 + 28 = 74") == (0, 1)
    assert check_equations("She makes 9 * 2 = $<<9*2=18>>18 a day") == (2, 0)
    assert check_equations("1,000 + 200 = 1,200 and 10 / 4 = 2.5") == (2, 0)
    assert check_equations("then 7 / 0 = 3") == (0, 0)                # not checkable
    assert check_equations("no equation here, 42") == (0, 0)
    assert check_equations("__import__('os') + 1 = 2") == (0, 0)      # only numbers are parsed


def test_toy_prm_valid_false_and_neutral_steps():
    q = ToyPRM().score("What is 47 + 28 - 19?", ["47 + 28 = 75", "75 - 19 = 55", "so we subtract"])
    assert q.shape == (3, len(ToyPRM.TAUS))
    assert (q[:, 1:] >= q[:, :-1]).all()                              # quantiles non-decreasing
    assert q[0, 0] > 0.5 > q[1, 2]                                    # valid high, false low
    assert torch.allclose(q[2], torch.tensor(ToyPRM.TAUS), atol=2e-3)  # no evidence: the prior
    assert q[2, 2] - q[2, 0] > q[0, 2] - q[0, 0]                      # and wider


def test_toy_prm_blind_spot_wrong_numbers_with_valid_arithmetic():
    """The question says 28; a rollout that uses 29 is wrong, and the PRM rates it as well as the
    right one. Only the outcome can tell them apart: that is what centering is for."""
    question = "What is 47 + 28 - 19?"
    right = "47 + 28 = 75\n75 - 19 = 56\nAnswer: 56"
    fluent_wrong = "47 + 29 = 76\n76 - 19 = 57\nAnswer: 57"
    prm = ToyPRM()
    b = [coherence_score(prm.score(question, split_steps(t))[:, 0]) for t in (right, fluent_wrong)]
    assert b[0] == b[1] and b[0] > 0.5
    assert is_correct(right, "56") and not is_correct(fluent_wrong, "56")


def test_coherence_constant_volatile_bounds_and_edges():
    assert coherence_score([0.7] * 5) == pytest.approx(0.7)
    steady, volatile = [0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.9, 0.1]
    assert coherence_score(volatile) < coherence_score(steady)
    assert coherence_score([]) == 0.0
    assert coherence_score([0.0, 0.0, 0.0]) == 0.0
    assert coherence_score([0.8]) == pytest.approx(0.8)              # fewer steps than any window
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        s = torch.rand(int(torch.randint(1, 12, (1,), generator=g)), generator=g)
        s[torch.rand(s.shape, generator=g) < 0.3] = 0.0
        r = coherence_score(s, lam_var=float(torch.rand(1, generator=g) * 5))
        assert 0.0 <= r <= 1.0 and math.isfinite(r)


# ----------------------------------------------------------------------------------------------------
# Rollouts, log-probs and the update, on the tiny model

@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok = progrs.load_model(str(TINY_MODEL), torch.device("cpu"))
    return model, tok


def no_amp():
    return torch.autocast("cpu", enabled=False)


def test_completion_mask_keeps_first_eos_and_drops_what_follows():
    eos, pad = 9, 9                                                   # pad == eos, as in Qwen2.5
    comp = torch.tensor([[5, 6, eos, pad, pad],
                         [5, 6, 7, 8, 4],                             # truncated: no EOS
                         [eos, pad, pad, pad, pad]])
    mask, truncated = progrs.completion_mask(comp, [eos])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


def test_forward_logprobs_match_generate_scores(tiny):
    model, tok = tiny
    prompts = [progrs.build_prompt(q) for q in ("What is 3 + 4?", "What is 47 + 28 - 19 + 6?")]
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(1)
    out = model.generate(**enc, max_new_tokens=12, do_sample=True, top_k=0, top_p=1.0,
                         temperature=0.7, num_return_sequences=2, pad_token_id=tok.pad_token_id,
                         output_scores=True, return_dict_in_generate=True)
    Tp = enc["input_ids"].shape[1]
    comp = out.sequences[:, Tp:]
    mask, _ = progrs.completion_mask(comp, [tok.eos_token_id])
    att = torch.cat([enc["attention_mask"].repeat_interleave(2, 0), mask.long()], 1)
    gen_lp = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        fwd_lp = progrs.token_logprobs(model, out.sequences, att, Tp, 0.7, no_amp)
    assert torch.allclose(fwd_lp[mask], gen_lp[mask], atol=1e-4)


def test_generate_rollouts_masks_and_texts(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    batch = progrs.generate(model, tok, [progrs.build_prompt("What is 12 + 30 - 5?")], 4, 48, 1.0, no_amp)
    assert batch["input_ids"].shape[0] == 4 and len(batch["texts"]) == 4
    lengths = batch["completion_mask"].sum(1)
    for row, n, trunc in zip(batch["input_ids"][:, batch["prompt_len"]:], lengths, batch["truncated"]):
        if not trunc:
            assert row[n - 1] == tok.eos_token_id                     # the EOS is inside the mask
            assert (row[:n - 1] != tok.eos_token_id).all()


def make_batch(model, tok, seed=0, n=8):
    torch.manual_seed(seed)
    prompts = [progrs.build_prompt(q) for q in ("What is 12 + 30 - 5?", "What is 60 - 18 + 7 + 2?")]
    return progrs.generate(model, tok, prompts, n // 2, 40, 1.0, no_amp)


def grads_after_update(model, batch, adv, micro_batch):
    m = type(model)(model.config)
    m.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(m.parameters(), lr=0.0)                     # keep weights, read gradients
    args = progrs.build_parser().parse_args([])
    args.micro_batch, args.max_grad_norm = micro_batch, 1e9
    progrs.update_policy(m, opt, batch, adv, args, no_amp)
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])


def test_committed_warm_start_leaves_room_for_rl(tiny):
    """The tiny model is what the default run trains: greedy accuracy between 40% and 70%, a mix of
    step-by-step and one-line (hasty) answers, and steps-per-answer in between (tiny_task/build_model.py)."""
    model, tok = tiny
    problems = load_problems(HERE / "tiny_task" / "test.jsonl")
    args = progrs.build_parser().parse_args(["--eval-batch", "256", "--max-new-tokens", "64"])
    args.q_index = 0
    res = progrs.evaluate(model, tok, problems, args, ToyPRM(), no_amp)
    assert 0.40 <= res["eval_accuracy"] <= 0.70
    one_line = sum(len(split_steps(t)) == 1 for t in res["texts"]) / len(problems)
    assert 0.2 <= one_line <= 0.8
    assert 1.2 <= res["eval_steps_per_answer"] <= 2.8


def test_same_gradient_for_any_micro_batch_split(tiny):
    model, tok = tiny
    batch = make_batch(model, tok)
    adv = torch.linspace(-1.5, 1.5, 8)
    g1, g4 = grads_after_update(model, batch, adv, 8), grads_after_update(model, batch, adv, 2)
    assert g1.abs().sum() > 0
    assert torch.allclose(g1, g4, atol=1e-6, rtol=1e-4)


def test_one_update_raises_probability_of_positive_advantage_completion(tiny):
    model, tok = tiny
    m = type(model)(model.config)
    m.load_state_dict(model.state_dict())
    m.eval()
    batch = make_batch(m, tok, seed=3)
    adv = torch.full((8,), -0.5)
    adv[0] = 3.5
    args = progrs.build_parser().parse_args([])
    args.micro_batch = 8
    Tp, mask = batch["prompt_len"], batch["completion_mask"]

    def seq_logprob():
        with torch.no_grad():
            lp = progrs.token_logprobs(m, batch["input_ids"], batch["attention_mask"], Tp, 1.0, no_amp)
        return (lp * mask).sum(1)

    before = seq_logprob()
    # a small plain gradient step: the direction of the update is what is under test
    progrs.update_policy(m, torch.optim.SGD(m.parameters(), lr=1e-2), batch, adv, args, no_amp)
    after = seq_logprob()
    assert after[0] > before[0]
    assert (after[1:] - before[1:]).mean() < 0                        # negative advantages: down


# ----------------------------------------------------------------------------------------------------
# End to end and CLI

def run_cli(*flags, timeout=600):
    return subprocess.run([sys.executable, str(HERE / "progrs.py"), *flags], cwd=HERE,
                          capture_output=True, text=True, timeout=timeout)


def short_run(out):
    return run_cli("--steps", "2", "--prompts-per-step", "4", "--group-size", "4", "--eval-size",
                   "16", "--eval-every", "1", "--max-new-tokens", "40", "--out", str(out))


def test_end_to_end_writes_metrics_and_loadable_checkpoint_and_is_reproducible(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    runs = []
    for name in ("a", "b"):
        proc = short_run(tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append([{k: v for k, v in r.items() if not k.startswith("t_")} for r in lines])
    assert runs[0] == runs[1]                                         # same seed: same numbers
    steps = [r for r in runs[0] if "train_accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("dominance_violations", "trace_error_rate", "steps_per_answer", "process_score",
                "completion_tokens", "truncated", "bonus_incorrect_abs"):
        assert key in steps[0]
    assert sum("eval_accuracy" in r for r in runs[0]) == 3            # start, step 1, step 2
    assert "greedy pass@1" in proc.stdout and "step scores" in proc.stdout  # summary and table
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a" / "model")
    assert model.config.model_type == "qwen2" and tok.eos_token_id is not None


@pytest.mark.parametrize("flags,needle", [
    (["--data", "nope.jsonl"], "nope.jsonl"),
    (["--group-size", "1"], "--group-size"),
    (["--mode", "best"], "--mode"),
    (["--lam", "-1"], "--lam"),
    (["--lam", "inf"], "--lam"),
    (["--lr", "nan"], "--lr"),
    (["--out", "progrs.py"], "--out"),
    (["--model", "./no/such/model"], "--model"),
    (["--model", "tiny_task"], "config.json"),
])
def test_cli_bad_input_is_one_line(flags, needle):
    proc = run_cli(*flags, "--steps", "1")
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in proc.stderr


def test_cli_malformed_jsonl_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 1 + 1?", "answer": "2"}\n{"question": oops}\n')
    proc = run_cli("--data", str(bad), "--steps", "1")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and f"{bad}:2" in err[0]
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text('{"question": "What is 1 + 1?"}\n')
    err = run_cli("--eval-data", str(missing), "--steps", "1").stderr.strip().splitlines()
    assert len(err) == 1 and f"{missing}:1" in err[0] and "answer" in err[0]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"question": "Caf\u00e9 1 + 1?", "answer": "2"}\n'.encode("latin-1"))
    err = run_cli("--data", str(latin1), "--steps", "1").stderr.strip().splitlines()
    assert len(err) == 1 and str(latin1) in err[0] and "UTF-8" in err[0]
