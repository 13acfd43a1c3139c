"""Pending tests for progrs.py's model-free functions (issue 20), to be merged into test_progrs.py.
Each states one behaviour; together they kill the survivors of tiny_task/mutation.sh (mutmut) and pin
the areas the issue lists. Fast (no model): pytest tiny_task/test_mutants_pending.py"""
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import progrs  # noqa: E402
from progrs import (ToyPRM, check_equations, coherence_score, compute_advantages,  # noqa: E402
                    dominance_violations, fluent_failures, load_problems, max_dominant_lam)

MODES = ("progrs", "progrs-strict", "absolute")


def metrics_batch(correct, b, mode="progrs", lam=1.0, judged=None, trace_error=None):
    """A batch dict as rollout_step returns it, for step_metrics: (P, G) outcomes and b's."""
    correct = torch.tensor(correct)
    b = torch.tensor(b, dtype=torch.float32)
    n = correct.numel()
    adv, a_out, c = compute_advantages(correct, b, mode, lam)
    return dict(correct=correct, b_grid=b, c=c, adv=adv, a_out=a_out,
                judged=[True] * n if judged is None else judged,
                trace_error=[False] * n if trace_error is None else trace_error, n_steps=[2] * n,
                completion_mask=torch.ones(n, 5, dtype=torch.bool), truncated=torch.zeros(n, dtype=torch.bool),
                unscorable=[False] * n)


def refused(*flags):
    """check_args on parsed flags: True if refused (the message names the flag), False if accepted."""
    try:
        progrs.check_args(progrs.build_parser().parse_args(list(flags)))
    except progrs.ProgrsError as e:
        assert flags[0].split("=")[0] in str(e)
        return True
    return False


# ----------------------------------------------------------------------------------------------------
# Advantages and dominance

def test_outcome_mode_is_grpo_divided_by_the_population_std():
    """outcome: A = A_out = (r - mean) / (population std + eps), whatever b and lam; without the std
    division (r - mean: 0.75, -0.25) or with the sample std (1.5, -0.5) the values differ."""
    ok = torch.tensor([[True, False, False, False], [True, True, False, False], [True] * 4])
    b = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    adv, a_out, _ = compute_advantages(ok, b, "outcome", lam=3.0)
    assert torch.equal(adv, a_out)
    want = [[3 ** 0.5, -(3 ** -0.5), -(3 ** -0.5), -(3 ** -0.5)], [1.0, 1.0, -1.0, -1.0], [0.0] * 4]
    assert torch.allclose(adv, torch.tensor(want), atol=1e-5)
    eps = progrs.ADV_EPS  # the eps sits outside the std: 0.75 / (0.433 + eps)
    assert float(adv[0, 0]) == pytest.approx(0.75 / (0.1875 ** 0.5 + eps), rel=1e-6)


def test_progrs_advantage_is_a_out_plus_lam_times_the_centered_bonus():
    """progrs: A = A_out + lam * c, and the returned c is outcome_conditioned_centering(b, correct)."""
    ok = torch.tensor([[True, False, False, True], [False] * 4])
    b = torch.tensor([[0.9, 0.3, 0.7, 0.2], [0.5, 0.1, 0.3, 0.9]])
    adv, a_out, c = compute_advantages(ok, b, "progrs", lam=0.7)
    assert torch.allclose(c, progrs.outcome_conditioned_centering(b, ok))
    assert torch.allclose(a_out, progrs.group_normalize(ok.float()))
    assert torch.allclose(adv, a_out + 0.7 * c)
    assert torch.allclose(c[0], torch.tensor([0.9, -0.2, 0.2, 0.2]))  # right keep b; wrong mean 0.5


def test_strict_mode_centres_the_right_rollouts_among_themselves():
    """progrs-strict: right rollouts get b - mean of the right b's, wrong ones as in progrs."""
    ok = torch.tensor([[True, True, False, False]])
    b = torch.tensor([[0.9, 0.5, 0.6, 0.2]])
    adv, a_out, c = compute_advantages(ok, b, "progrs-strict", lam=2.0)
    assert torch.allclose(c, torch.tensor([[0.2, -0.2, 0.2, -0.2]]))
    assert torch.allclose(adv, a_out + 2.0 * c)


def test_absolute_mode_normalises_r_plus_lam_b():
    """absolute: A = group_normalize(r + lam * b); A_out and c as in progrs."""
    ok = torch.tensor([[True, False, False, False]])
    b = torch.tensor([[0.2, 0.9, 0.1, 0.0]])
    adv, a_out, c = compute_advantages(ok, b, "absolute", lam=0.5)
    r = torch.tensor([[1.1, 0.45, 0.05, 0.0]])
    assert torch.allclose(adv, (r - r.mean()) / (r.std(correction=0) + progrs.ADV_EPS), atol=1e-6)
    assert torch.allclose(c, progrs.outcome_conditioned_centering(b, ok))


def test_group_normalize_uses_its_eps_argument():
    """eps is added to the std: a uniform row stays 0, and a large eps shrinks every value."""
    r = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(progrs.group_normalize(r, eps=0.5), torch.tensor([[0.5, -0.5]]))
    assert torch.allclose(progrs.group_normalize(r), torch.tensor([[1.0, -1.0]]), atol=1e-5)


def test_group_normalize_works_along_the_last_dim_for_any_leading_shape():
    """Groups lie along the last dim: one group (1-D) or groups under any leading shape (3-D)."""
    one = progrs.group_normalize(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(one, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    r = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    want = torch.stack([progrs.group_normalize(g) for g in r.reshape(-1, 3)]).view_as(r)
    assert torch.allclose(progrs.group_normalize(r), want)


def test_dominance_bound_at_group_size_two():
    """G = 2 (one right, one wrong): the lone wrong rollout's c is 0, so progrs and progrs-strict
    dominate at any lam (inf); absolute still ties at lam = 1; outcome never mixes in b (inf)."""
    assert max_dominant_lam(2, "progrs") == math.inf
    assert max_dominant_lam(2, "progrs-strict") == math.inf
    assert max_dominant_lam(2, "absolute") == 1.0
    assert max_dominant_lam(2, "outcome") == math.inf
    assert max_dominant_lam(8, "absolute") == 1.0 and max_dominant_lam(8, "outcome") == math.inf


def worst_group(G, k, mode):
    """k right and G - k wrong: the widest c gap between a right and a wrong rollout (b in {0, 1})."""
    ok = torch.tensor([[True] * k + [False] * (G - k)])
    right = [0.0] + [1.0] * (k - 1) if mode == "progrs-strict" else [0.0] * k
    return ok, torch.tensor([right + [1.0] + [0.0] * (G - k - 1)], dtype=torch.float64)


def test_max_dominant_lam_is_the_smallest_ratio_of_outcome_gap_to_bonus_gap():
    """progrs and progrs-strict: min over k of (A_out right - A_out wrong) / (widest c gap), both read
    off actual groups (group_normalize with its eps, and the centering); pinned to 1e-9."""
    for mode in ("progrs", "progrs-strict"):
        for G in (3, 4, 5, 8, 16):
            ratios = []
            for k in range(1, G):
                ok, b = worst_group(G, k, mode)
                _, a_out, c = compute_advantages(ok, b, mode, 1.0)
                a_out = progrs.group_normalize(ok.double())
                gap = float(a_out[0, 0] - a_out[0, -1])
                widest = float(c[ok].min() - c[~ok].max()) * -1
                if widest > 0:
                    ratios.append(gap / widest)
            assert max_dominant_lam(G, mode) == pytest.approx(min(ratios), rel=1e-9), (mode, G)
    assert max_dominant_lam(8) == pytest.approx(2.58, abs=0.005)
    assert max_dominant_lam(8, "progrs-strict") == pytest.approx(1.33, abs=0.005)
    assert max_dominant_lam(64, "progrs-strict") == pytest.approx(1.03, abs=0.005)


def test_max_dominant_lam_is_tight_in_every_mode():
    """Just below the bound (1 - 1e-5) no group violates: 3,000 random groups per (G, mode), b in [0, 1]
    with a third of the b's snapped to 0 or 1. Just above it (1 + 1e-5; absolute: at it, a tie) the
    worst constructed group violates."""
    gen = torch.Generator().manual_seed(0)
    for mode in MODES:
        for G in (2, 3, 4, 8):
            bound = max_dominant_lam(G, mode)
            below = 1e6 if bound == math.inf else bound * (1 - 1e-5)
            b = torch.rand(3000, G, generator=gen, dtype=torch.float64)
            snap = torch.rand(3000, G, generator=gen) < 1 / 3
            b = torch.where(snap, b.round(), b)
            ok = torch.rand(3000, G, generator=gen) < 0.5
            assert dominance_violations(compute_advantages(ok, b, mode, below)[0], ok) == 0, (mode, G)
            if bound == math.inf:
                continue
            above = bound if mode == "absolute" else bound * (1 + 1e-5)
            hits = [dominance_violations(compute_advantages(*worst_group(G, k, mode), mode, above)[0],
                                         worst_group(G, k, mode)[0]) for k in range(1, G)]
            assert max(hits) > 0, (mode, G)


def test_dominance_violations_counts_pairs_not_rollouts():
    """Pairs (right i, wrong j) of one group with A_j >= A_i: one wrong rollout above two right ones is
    2, three wrong above one right is 3; ties count; pairs never cross groups."""
    ok = torch.tensor([[True, True, False, False], [True, False, False, False]])
    adv = torch.tensor([[1.0, 2.0, 3.0, 0.0], [-1.0, 0.0, 1.0, -1.0]])
    assert dominance_violations(adv, ok) == 2 + 3
    assert dominance_violations(adv[:1], ok[:1]) == 2
    assert dominance_violations(torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]])) == 1
    assert dominance_violations(torch.tensor([[1.0, 0.5]]), torch.tensor([[True, False]])) == 0
    # the second group's wrong rollouts sit above the first group's right ones: no pair
    assert dominance_violations(torch.tensor([[0.0, -1.0], [9.0, 5.0]]), torch.tensor([[True, False]] * 2)) == 0
    # a wrong rollout below a right one is no violation, whichever column holds it
    assert dominance_violations(torch.tensor([[0.0, 1.0]]), torch.tensor([[False, True]])) == 0
    assert dominance_violations(torch.tensor([[1.0, 0.0]]), torch.tensor([[False, True]])) == 1


def test_step_metrics_counts_dominance_violations_on_a_not_a_out():
    """The logged dominance_violations is taken on the advantages trained on (A), which lam can break,
    not on A_out, which never violates."""
    batch = metrics_batch([[True, False, False, False]], [[0.0, 1.0, 0.0, 0.0]], lam=10.0)
    assert dominance_violations(batch["a_out"], batch["correct"]) == 0
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), [])
    assert m["dominance_violations"] == dominance_violations(batch["adv"], batch["correct"]) == 1


# ----------------------------------------------------------------------------------------------------
# The fluent-failure gauge and the step metrics

def test_unjudged_wrong_rollouts_are_never_fluent_failures():
    """A wrong rollout with no judged step does not count, however high its b; a judged one does."""
    ff = fluent_failures(torch.tensor([0.5, 0.9, 0.9, 0.9]), torch.tensor([True, False, False, True]),
                         torch.tensor([True, False, True, False]), [])
    assert ff.tolist() == [False, False, True, False]
    batch = metrics_batch([[True, False, False, False]], [[0.5, 0.9, 0.9, 0.0]],
                          judged=[True, False, True, True])
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), [])
    assert m["fluent_failure_rate"] == 0.25 and batch["fluent"].tolist() == [[False, False, True, False]]


def test_fluent_failures_reach_the_median_of_the_pool_and_this_batch():
    """The threshold is the median of the pool plus this batch's right b's (b >= it counts); None when
    both are empty."""
    b, ok, judged = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([True, False, False]), torch.ones(3, dtype=torch.bool)
    assert fluent_failures(b, ok, judged, [0.4, 0.8]).tolist() == [False, True, False]    # median 0.4
    assert fluent_failures(b, ok, judged, [0.6, 0.8]).tolist() == [False, False, False]   # median 0.6
    assert fluent_failures(b, ok, judged, [0.5, 0.5]).tolist() == [False, True, False]    # a tie counts
    assert fluent_failures(b, torch.zeros(3, dtype=torch.bool), judged, []) is None


class Stop(Exception):
    """Raised by a fake to end a run early."""


@pytest.mark.filterwarnings("ignore:Detected call of")  # the optimizer step is faked away
def test_the_trainers_right_b_pool_keeps_only_the_last_fluent_pool_values(tmp_path, monkeypatch):
    """train() feeds step_metrics a window of the last FLUENT_POOL right b's (oldest dropped): after 3
    steps of 200 right rollouts each, the last evaluation sees the last 256 b's, in order."""
    P, G = 50, 4
    seen = {"steps": 0}

    def fake_rollout_step(model, tok, problems, args, prm, amp):
        b = (torch.arange(P * G, dtype=torch.float32) + 1000 * seen["steps"]).view(P, G)
        seen["steps"] += 1                                # 0: the teaching view before step 1
        return dict(metrics_batch(torch.ones(P, G, dtype=torch.bool).tolist(), b.tolist()),
                    t_generate=0.0, t_score=0.0, texts=[""] * (P * G))

    def fake_evaluate(model, tok, problems, args, prm, amp, right_pool=()):
        if seen["steps"] > 1:                             # the last evaluation, before any save
            seen["pool"] = list(right_pool)
            raise Stop
        return dict(eval_accuracy=0.0, eval_trace_error_rate=0.0, eval_steps_per_answer=0.0)
    monkeypatch.setattr(progrs, "rollout_step", fake_rollout_step)
    monkeypatch.setattr(progrs, "evaluate", fake_evaluate)
    monkeypatch.setattr(progrs, "teaching_view", lambda *a, **k: "")
    monkeypatch.setattr(progrs, "update_policy", lambda *a, **k: dict(kl=0.0, entropy=0.0))
    args = progrs.build_parser().parse_args(["--steps", "3", "--out", str(tmp_path), "--prompts-per-step",
                                             str(P), "--group-size", str(G)])
    progrs.apply_defaults(args)
    problems = [{"question": "q", "gold": "1"}] * P
    with pytest.raises(Stop):
        progrs.train(torch.nn.Linear(1, 1), None, problems, problems, args, None, ToyPRM(), log=lambda *a: None)
    assert progrs.FLUENT_POOL == 256 and seen["steps"] == 4
    want = [float(2000 + i) for i in range(P * G)] + [float(3000 + i) for i in range(P * G)]
    assert seen["pool"] == want[-progrs.FLUENT_POOL:]


def test_trace_error_rate_is_per_right_answer():
    """trace_error_rate = right answers reached through a false equation / right answers (1 of 2),
    not / all rollouts (1 of 8); with no right answer it is 0."""
    batch = metrics_batch([[True, True, False, False], [False] * 4], [[0.5] * 4] * 2,
                          trace_error=[True] + [False] * 7)
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), [])
    assert m["trace_error_rate"] == 0.5 and m["train_accuracy"] == 0.25
    r = progrs.rollout_metrics(dict(correct=[False, False], b=[0.1, 0.3], trace_error=[False, False],
                                    n_steps=[1, 4]), None)
    assert r == dict(accuracy=0.0, process_score=pytest.approx(0.2), trace_error_rate=0.0,
                     steps_per_answer=2.5, fluent_failure_rate=None)
    r = progrs.rollout_metrics(dict(correct=[True, False, False, False], b=[0.1, 0.3, 0.2, 0.2],
                                    trace_error=[True, False, False, False], n_steps=[1, 4, 0, 0]),
                               torch.tensor([False, True, False, False]))
    assert r == dict(accuracy=0.25, process_score=pytest.approx(0.2), trace_error_rate=1.0,
                     steps_per_answer=1.25, fluent_failure_rate=0.25)


def test_bonus_incorrect_abs_is_the_mean_absolute_bonus_of_wrong_rollouts():
    """Its signed mean is 0 by construction (centred); the log keeps mean |c| of the wrong rollouts:
    (0.2 + 0.1 + 0.3 + 0.0875 + 0.2625 + 0.5375 + 0.3625) / 7. bonus_correct is the mean c of right ones."""
    batch = metrics_batch([[True, False, False, False], [False] * 4], [[0.8, 0.6, 0.5, 0.1], [0.45, 0.1, 0.9, 0.0]])
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), [])
    assert float(batch["c"][~batch["correct"]].mean()) == pytest.approx(0.0, abs=1e-6)
    assert m["bonus_incorrect_abs"] == pytest.approx(1.85 / 7, abs=1e-6)
    assert m["bonus_correct"] == pytest.approx(0.8)


def test_step_metrics_counts_groups_tokens_truncation_and_push():
    """groups_all_correct / groups_all_wrong against --group-size, the mean completion length, truncated
    and unscorable counts, process scores by outcome, and all_wrong_push_to_fluent (None without a push)."""
    batch = metrics_batch([[True] * 4, [False] * 4, [True, False, True, False]],
                          [[0.9, 0.8, 0.7, 0.6], [0.2, 0.2, 0.2, 0.2], [0.5, 0.4, 0.3, 0.1]])
    batch["completion_mask"] = torch.tensor([[1, 1, 1, 0, 0]] * 6 + [[1, 0, 0, 0, 0]] * 6, dtype=torch.bool)
    batch["truncated"] = torch.tensor([True, False, True] + [False] * 9)
    batch["unscorable"] = [True] + [False] * 11
    pool = []
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), pool)
    assert (m["groups_all_correct"], m["groups_all_wrong"]) == (1, 1)
    assert m["completion_tokens"] == 2.0 and m["truncated"] == 2 and m["unscorable"] == 1
    assert m["process_score"] == pytest.approx(sum([0.9, 0.8, 0.7, 0.6, 0.8, 0.5, 0.4, 0.3, 0.1]) / 12)
    assert m["process_score_correct"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.3) / 6)
    assert m["process_score_incorrect"] == pytest.approx((0.8 + 0.4 + 0.1) / 6)
    assert m["all_wrong_push_to_fluent"] is None                      # the all-wrong group is uniform
    assert pool == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    assert progrs.step_metrics(batch, types.SimpleNamespace(group_size=4), None)["fluent_failure_rate"] == 0.0


# ----------------------------------------------------------------------------------------------------
# Verifier and data

def test_a_negative_answer_never_matches_a_positive_gold():
    """The sign is part of the value: "-5" against gold "5" is wrong, "-5" against "-5" right."""
    assert not progrs.answers_match("-5", "5") and not progrs.answers_match("5", "-5")
    assert progrs.answers_match("-5", "-5") and progrs.answers_match("5", "5")
    assert not progrs.is_correct("Answer: -5", "5") and progrs.is_correct("Answer: -5", "-5")
    assert progrs.is_correct("Answer: -1,250.50 dollars", "-1250.5")


def test_a_non_numeric_gold_is_compared_without_dollars_stars_and_a_final_period():
    """_clean_answer drops $ and * anywhere and one trailing period, nothing else."""
    assert progrs.answers_match("$abc", "abc") and progrs.answers_match("**abc**", "abc")
    assert progrs.answers_match(" abc. ", "abc") and progrs.answers_match("abc", "abc.")
    assert not progrs.answers_match(".abc", "abc") and not progrs.answers_match("abc..", "abc")
    assert not progrs.answers_match("a b c", "abc") and not progrs.answers_match("ABC", "abc")


def jsonl(tmp_path, text, name="d.jsonl", **kw):
    path = tmp_path / name
    path.write_text(text, **kw)
    return path


def test_empty_and_blank_only_files_are_refused_naming_the_file(tmp_path):
    """A file with no records (empty, or only blank lines) is one ProgrsError naming the file."""
    for text in ("", "\n\n  \n\t\n"):
        path = jsonl(tmp_path, text)
        with pytest.raises(progrs.ProgrsError, match=r"d\.jsonl: no records"):
            load_problems(path)


def test_empty_answers_and_non_finite_numbers_are_refused_naming_file_and_line(tmp_path):
    """An empty answer, an empty final answer after ####, an empty question, NaN and +-Infinity: one
    ProgrsError naming the file and the line."""
    good = json.dumps({"question": "q?", "answer": "1"})
    for bad, needle in (('"answer": ""', "empty"), ('"answer": "  "', "empty"), ('"answer": "x ####  "', "empty"),
                        ('"answer": NaN', "finite"), ('"answer": Infinity', "finite"),
                        ('"answer": -Infinity', "finite")):
        path = jsonl(tmp_path, good + "\n\n" + '{"question": "q?", ' + bad + "}\n")
        with pytest.raises(progrs.ProgrsError, match=rf"d\.jsonl:3: .*{needle}"):
            load_problems(path)
    path = jsonl(tmp_path, json.dumps({"question": " ", "answer": "1"}) + "\n")
    with pytest.raises(progrs.ProgrsError, match=r"d\.jsonl:1: empty 'question'"):
        load_problems(path)


def test_a_byte_order_mark_is_accepted_and_questions_and_golds_are_stripped(tmp_path):
    """A UTF-8 byte-order mark at the start (some editors write one) is dropped; the question is
    stripped and a rationale's gold is what follows its last ####."""
    text = json.dumps({"question": "  What is 2 + 3?\n", "answer": "2 + 3 = 5\n#### 5 "}) + "\n"
    path = jsonl(tmp_path, text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_problems(path) == [{"question": "What is 2 + 3?", "gold": "5"}]
    assert progrs.parse_gold("a #### 3 #### 4 ") == "4" and progrs.parse_gold(" 7 ") == "7"
    assert progrs.parse_gold("so #### 12 apples") == "12 apples"


def test_load_problems_errors_are_one_line_naming_what_is_wrong(tmp_path):
    """A missing file, non-UTF-8 bytes, bad JSON, a record that is not an object and a file with no
    records: each one line naming the file (and the line), with what was expected."""
    expected = "expected JSONL with 'question' and 'answer'"

    def message(path):
        with pytest.raises(progrs.ProgrsError) as e:
            load_problems(path)
        return str(e.value)
    missing = tmp_path / "no_such.jsonl"
    assert message(missing) == f"{missing}: no such data file ({expected})"
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "\xff"}\n')
    assert message(path) == f"{path}: not UTF-8 text (byte 29); {expected}"
    jsonl(tmp_path, json.dumps({"question": "q?", "answer": "1"}) + "\n{oops\n")
    assert message(path) == (f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes); "
                             'expected one {"question": ..., "answer": ...} object per line')
    jsonl(tmp_path, "\n \n")
    assert message(path) == f"{path}: no records ({expected})"
    for record in ("[1, 2]", '"q"', "3", "null"):
        jsonl(tmp_path, record + "\n")
        assert message(path) == (f"{path}:1: expected an object with a string 'question' and a string or "
                                 "number 'answer'")
    jsonl(tmp_path, json.dumps({"question": "q?", "answer": " #### "}) + "\n")
    assert message(path) == f"{path}:1: empty 'question' or empty final answer"
    jsonl(tmp_path, '{"question": "q?", "answer": NaN}\n')
    assert message(path) == f"{path}:1: expected a finite number 'answer', got nan"


# ----------------------------------------------------------------------------------------------------
# Toy PRM

def test_a_step_with_one_true_and_one_false_equation_is_judged_false():
    """The false equation wins, in either order: the step scores as a false step."""
    prm = ToyPRM()
    false_row = prm.score("", ["3 + 3 = 7"])[0]
    for step in ("2 + 2 = 4 and 3 + 3 = 7", "3 + 3 = 7 and 2 + 2 = 4"):
        assert check_equations(step) == (1, 1)
        assert torch.equal(prm.score("", [step])[0], false_row)
    assert (false_row < prm.score("", ["2 + 2 = 4"])[0]).all()


# ----------------------------------------------------------------------------------------------------
# Flags

def test_check_args_refuses_micro_batch_0_negative_seeds_and_non_finite_floats():
    """--micro-batch >= 1, --seed >= 0, and every float flag refuses inf, -inf and nan."""
    assert refused("--micro-batch", "0") and not refused("--micro-batch", "1")
    assert refused("--seed", "-1") and not refused("--seed", "0")
    floats = [flag for _, flag, kind, *_ in progrs.FLAGS if kind is float]
    assert len(floats) >= 7
    for flag in floats:
        for value in ("inf", "-inf", "nan"):
            assert refused(f"{flag}={value}"), (flag, value)


def test_apply_defaults_fills_the_named_models_column_and_keeps_what_was_given():
    """A model in tiny_task/ gets the tiny column, any other the LLM column, --defaults overrides;
    flags given stay; --save-every defaults to --eval-every."""
    def filled(*flags):
        args = progrs.build_parser().parse_args(list(flags))
        return progrs.apply_defaults(args), args
    size, args = filled()
    assert size == "tiny" and (args.eval_size, args.eval_every, args.steps, args.micro_batch) == (0, 20, 60, 128)
    assert args.lr == 1e-4 and args.data == progrs.TINY_DATA[0] and args.save_every == 20
    size, args = filled("--model", str(progrs.TINY_TASK / "model_sparse"))
    assert size == "tiny"
    size, args = filled("--model", "some-org/some-llm")
    assert size == "llm" and (args.eval_size, args.eval_every, args.max_new_tokens, args.micro_batch) == (500, 25, 512, 8)
    assert args.lr == 1e-6 and args.data == args.eval_data == "gsm8k" and args.save_every == 25
    assert filled("--model", "some-org/some-llm", "--defaults", "tiny")[0] == "tiny"
    assert filled("--defaults", "llm")[0] == "llm"
    size, args = filled("--model", "some-org/some-llm", "--eval-size", "0", "--eval-every", "3", "--save-every", "5")
    assert (args.eval_size, args.eval_every, args.save_every, args.steps) == (0, 3, 5, 200)


# ----------------------------------------------------------------------------------------------------
# Survivors of the first mutation run: the behaviour each kills is in its docstring

def test_coherence_clamps_scores_to_0_1_and_computes_in_float64():
    """Scores are clamped to [0, 1] before the windows; the arithmetic is float64 whatever the input
    (a list of ints works; 0.1 and 0.3: 0.2 * exp(-0.5), exactly as in float64)."""
    assert coherence_score([-0.5, 0.5]) == coherence_score([0.0, 0.5])
    assert coherence_score([1.5, 3.0]) == 1.0 and coherence_score([2.0]) == 1.0
    assert coherence_score([1, 0, 1]) == coherence_score([1.0, 0.0, 1.0])
    assert coherence_score([0.1, 0.3]) == pytest.approx(0.2 * math.exp(-0.5), rel=1e-13, abs=0)
    assert coherence_score(torch.tensor([0.1, 0.3])) == pytest.approx(
        coherence_score(torch.tensor([0.1, 0.3]).double().tolist()), rel=1e-13, abs=0)


def test_plain_braces_are_no_box_and_two_boxes_on_a_line_join_with_a_space():
    """Only \\boxed{ opens an answer box; two boxes closing on one line are one answer, "3 4"."""
    assert progrs.extract_answer("the set {1, 2}\nAnswer: 5") == "5"
    assert progrs._closed_boxes("{x} \\boxed{5}") == [(11, 12)]
    assert progrs.extract_answer("\\boxed{3} and \\boxed{4}") == "3 4"


def test_an_answer_mark_with_only_stars_commits_to_nothing_on_that_line():
    """"**Answer:**" alone is no answer: the next answer line counts; the stars are dropped."""
    assert progrs.is_correct("2 + 3 = 5\n**Answer:**\n**Answer:** 5", "5")
    assert progrs.extract_answer("**Answer:** 18") == "18"


def test_find_answer_end_counts_the_newline_only_when_there_is_one():
    """end is the index just past the answer line: its newline if it has one, else the text's end."""
    found = progrs.find_answer("Answer: 7")
    assert (found.start, found.end, found.ended) == (0, 9, False)
    found = progrs.find_answer("x\nAnswer: 7\nmore")
    assert (found.start, found.end, found.ended) == (2, 12, True)


def test_a_numeric_gold_is_read_without_dollars_commas_and_a_final_period():
    """A gold like "$18", "1,234" or "18." is a number; ".5" or "5X" is not, so it is compared as text."""
    assert progrs.answers_match("18 dollars", "$18") and progrs.answers_match("18 dollars", "18.")
    assert progrs.answers_match("$1,234.00 per year", "1,234")
    assert not progrs.answers_match("5", ".5") and not progrs.answers_match("5", "5X")


def test_safe_eval_reads_unicode_operators_and_refuses_what_is_not_arithmetic():
    """÷ and the minus sign are operators; names, powers, not, huge or non-finite values give None,
    never an exception; at most MAX_EXPR characters and MAX_DIGITS digits per number."""
    assert progrs.safe_eval("12 ÷ 4") == 3.0 and progrs.safe_eval("7 − 2") == 5.0
    for junk in ("abc", "-abc", "abc + 1", "1 + abc", "2 ** 3", "not 1", "1e308 * 10", "-(1e308 * 10)"):
        assert progrs.safe_eval(junk) is None, junk
    e120 = "+".join(["1"] * 60) + "0"
    assert len(e120) == progrs.MAX_EXPR and progrs.safe_eval(e120) == 69.0
    assert progrs.safe_eval(e120 + "0") is None
    assert progrs.safe_eval("12345678901234 + 1") == 12345678901235.0                   # 14 digits
    assert progrs.safe_eval("123456789012345 + 1") == 123456789012346.0                 # 15 digits
    assert progrs.safe_eval("1234567890123456 + 1") is None                             # 16 digits


def lhs(text):
    return progrs._lhs_before(text, text.index("="))


def test_lhs_before_finds_the_arithmetic_run_that_ends_at_the_equals_sign():
    """The left side starts at a number, sign or parenthesis after prose, a list's ", " or a sentence's
    period; it keeps decimals; a start glued to a word or period, or over MAX_EXPR characters, is None."""
    assert lhs("Done. 3 + 4 = 7") == "3 + 4 "
    assert lhs("1.5 + 2 = 3.5") == "1.5 + 2 "
    assert lhs("a, b 3 + 4 = 7") == "3 + 4 "
    assert lhs("1, 2, 3 + 4 = 7") == "3 + 4 " and lhs("2, 3 + 4 = 7") == "3 + 4 "
    assert lhs("3 + 4 = 7, then 8") == "3 + 4 "
    assert lhs("$3 + $4 = $7") == "3 + $4 " and lhs("(2 + 3) * 4 = 20") == "(2 + 3) * 4 "
    assert lhs("v2 + 3 = 5") is None and lhs("x.(2 + 3) = 5") is None and lhs("= 5") is None
    assert lhs("y" * 130 + " 3 + 4 = 7") == "3 + 4 "
    assert lhs("so:-2 + 7 = 5") == "-2 + 7 " and lhs("so:(2 + 3) = 5") == "(2 + 3) "
    run = "1 + " * 30
    assert len(run) == progrs.MAX_EXPR and lhs(run + "= 31") == run and lhs("1" + run + "= 31") is None


def test_check_equations_needs_an_operator_on_the_left_and_uses_relative_and_absolute_tolerance():
    """"12 = 13" is no equation; "3+4=7" needs no spaces; values match within rel 1e-6 or abs 1e-6."""
    assert check_equations("we have 12 = 13") == (0, 0)
    assert check_equations("3+4=7") == (1, 0) and check_equations("3+4=8") == (0, 1)
    assert check_equations("10000000 / 3 = 3333333.3") == (1, 0)
    assert check_equations("0.1 + 0.2 - 0.3 = 0") == (1, 0)
    assert check_equations("total.(2 + 3) = 6") == (0, 0)


def test_toy_prm_quantiles_are_the_beta_quantiles_with_4_pseudo_counts():
    """True step: t^(1/5); false step: 1 - (1 - t)^(1/5), at taus 0.1, 0.5, 0.9; unjudged: NaN."""
    q = ToyPRM().score("", ["47 + 28 = 75", "75 - 19 = 55", "so we add"])
    assert q.dtype == torch.float32 and q.shape == (3, 3)
    assert q[0].tolist() == pytest.approx([t ** 0.2 for t in (0.1, 0.5, 0.9)], abs=1e-6)
    assert q[1].tolist() == pytest.approx([1 - (1 - t) ** 0.2 for t in (0.1, 0.5, 0.9)], abs=1e-6)
    assert q[0].tolist() == pytest.approx([0.63, 0.87, 0.98], abs=0.005)
    assert q[1].tolist() == pytest.approx([0.02, 0.13, 0.37], abs=0.005)
    assert q[2].isnan().all()


def test_score_completions_trace_errors_steps_judged_and_lam_var(monkeypatch):
    """trace_error: a right answer through at least one false equation (never a wrong answer); an
    unscorable text: wrong, no trace error, 0 steps; judged: any step judged; b uses lam_var."""
    texts = ["2 + 2 = 4\nAnswer: 4", "2 + 2 = 5\nAnswer: 4", "2 + 2 = 5\nAnswer: 5", "boom\nAnswer: 4",
             "we add\nAnswer: 4", "2 + 2 = 4\n2 + 3 = 9\nAnswer: 4"]
    probs = [{"question": "What is 2 + 2?", "gold": "4"}] * len(texts)

    real = progrs.split_steps

    def fragile(text):
        if "boom" in text:
            raise RuntimeError("boom")
        return real(text)
    monkeypatch.setattr(progrs, "split_steps", fragile)
    s = progrs.score_completions(probs, texts, ToyPRM(), 1, 0.0)
    assert s["correct"] == [True, True, False, False, True, True]
    assert s["trace_error"] == [False, True, False, False, False, True]
    assert s["unscorable"] == [False, False, False, True, False, False]
    assert s["n_steps"] == [1, 1, 1, 0, 1, 2]
    assert s["judged"] == [True, True, True, False, False, True]
    q = ToyPRM().score("", ["2 + 2 = 4", "2 + 3 = 9"])[:, 1]
    assert s["step_scores"][0] == [pytest.approx(float(q[0]))] and s["step_scores"][3] == []
    assert s["step_scores"][4] == [pytest.approx(math.nan, nan_ok=True)]
    assert s["b"][5] == pytest.approx(coherence_score(q, lam_var=0.0)) == pytest.approx(float(q.mean()))
    s2 = progrs.score_completions(probs[5:], texts[5:], ToyPRM(), 1, 2.0)
    assert s2["b"][0] == pytest.approx(coherence_score(q, lam_var=2.0)) and s2["b"][0] < s["b"][5]


def test_step_metrics_logs_exactly_these_keys_and_the_float32_mean_b():
    """The metrics line's keys are fixed (a renamed or extra key changes what metrics.jsonl means);
    process_score is the mean of the float32 b's the advantages used."""
    batch = metrics_batch([[True, False, False]], [[0.1, 0.2, 0.7]])
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=3), [])
    assert set(m) == {"train_accuracy", "process_score", "trace_error_rate", "steps_per_answer",
                      "fluent_failure_rate", "process_score_correct", "process_score_incorrect",
                      "bonus_correct", "bonus_incorrect_abs", "groups_all_correct", "groups_all_wrong",
                      "dominance_violations", "completion_tokens", "truncated", "unscorable",
                      "all_wrong_push_to_fluent"}
    assert m["process_score"] == float(batch["b_grid"].mean())
