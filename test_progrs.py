"""progrs.py's specification, in its order: the PROGRS idea, then the pipeline as a step runs it,
then the tools beside it in tiny_task/. CPU only, a few minutes: pytest test_progrs.py"""
import contextlib
import copy
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch

import progrs
from progrs import (ToyPRM, check_equations, coherence_score, compute_advantages,
                    dominance_violations, extract_answer, fluent_failures, group_normalize,
                    is_correct, load_problems, max_dominant_lam, outcome_conditioned_centering,
                    split_steps)

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------
# The PROGRS idea: centering, advantages, dominance, coherence, fluent failures (torch alone)

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
    for i in (0, 60, 120, 500, 3999):                     # one row alone = that row in a batch
        assert torch.equal(outcome_conditioned_centering(s[i:i + 1], ok[i:i + 1])[0], c[i])
    perm = torch.randperm(s.shape[1], generator=torch.Generator().manual_seed(2))
    permuted = outcome_conditioned_centering(s[:, perm], ok[:, perm])
    assert torch.allclose(permuted, c[:, perm], atol=1e-6)

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
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

def test_doctests_in_progrs():
    import doctest
    result = doctest.testmod(progrs)
    assert result.attempted >= 2 and result.failed == 0

# Advantages: A = A_out + lam * c (progrs), A_out (outcome), normalised r + lam * b (absolute), both
# classes centred (progrs-strict)

def test_group_normalize_gives_uniform_rows_0_and_divides_by_the_population_std_plus_eps():
    """(r - mean) / (population std + eps) along the last dim: a uniform row stays 0, a large eps
    shrinks every value; one group (1-D) or groups under any leading shape (3-D)."""
    r = torch.tensor([[1.0] * 4, [0.0] * 4])
    assert torch.equal(group_normalize(r), torch.zeros(2, 4))
    r = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(group_normalize(r, eps=0.5), torch.tensor([[0.5, -0.5]]))
    assert torch.allclose(group_normalize(r), torch.tensor([[1.0, -1.0]]), atol=1e-5)
    one = group_normalize(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(one, torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5)
    r = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    want = torch.stack([group_normalize(g) for g in r.reshape(-1, 3)]).view_as(r)
    assert torch.allclose(group_normalize(r), want)

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
    """progrs: A = A_out + lam * c, the returned c outcome_conditioned_centering(b, correct)."""
    ok = torch.tensor([[True, False, False, True], [False] * 4])
    b = torch.tensor([[0.9, 0.3, 0.7, 0.2], [0.5, 0.1, 0.3, 0.9]])
    adv, a_out, c = compute_advantages(ok, b, "progrs", lam=0.7)
    assert torch.allclose(c, outcome_conditioned_centering(b, ok))
    assert torch.allclose(a_out, group_normalize(ok.float()))
    assert torch.allclose(adv, a_out + 0.7 * c)
    assert torch.allclose(c[0], torch.tensor([0.9, -0.2, 0.2, 0.2]))  # right keep b; wrong mean 0.5

def test_all_incorrect_row_learns_only_from_centered_bonus():
    ok = torch.zeros(1, 4, dtype=torch.bool)
    b = torch.tensor([[0.2, 0.8, 0.5, 0.1]])
    adv, a_out, bonus = compute_advantages(ok, b, "progrs", 0.7)
    assert torch.equal(a_out, torch.zeros(1, 4))
    assert torch.allclose(adv, 0.7 * (b - b.mean()), atol=1e-6)
    assert torch.equal(compute_advantages(ok, b, "outcome", 0.7)[0], torch.zeros(1, 4))

def test_strict_reading_centres_both_outcome_classes():
    """progrs-strict: right rollouts get b - the mean of the right b's, wrong ones as in progrs;
    each class sums to 0, order within a class is kept, an all-right group gets no net push."""
    ok = torch.tensor([[True, True, False, False]])
    b = torch.tensor([[0.9, 0.5, 0.6, 0.2]])
    adv, a_out, c = compute_advantages(ok, b, "progrs-strict", lam=2.0)
    assert torch.allclose(c, torch.tensor([[0.2, -0.2, 0.2, -0.2]]))
    assert torch.allclose(adv, a_out + 2.0 * c)
    s, ok = random_groups()
    b = (s + 2) / 4
    adv, a_out, bonus = compute_advantages(ok, b, "progrs-strict", 0.7)
    for cls in (ok, ~ok):
        n = cls.sum(1)
        sums = torch.where(cls, bonus, 0.0).sum(1)
        assert torch.allclose(sums[n > 0], torch.zeros(int((n > 0).sum())), atol=1e-5)
    assert torch.allclose(adv, a_out + 0.7 * bonus)
    assert torch.allclose(adv[:50].sum(1), torch.zeros(50), atol=1e-5)  # all right: no net push
    i = 300                                                          # order within a class is kept
    assert torch.equal(torch.argsort(b[i][ok[i]]), torch.argsort(bonus[i][ok[i]]))

def test_absolute_blend_is_r_plus_lam_b_normalised_within_each_group():
    """--mode absolute: x = r + lam * b, then (x - mean) / (population std + eps) in each group;
    A_out and c as in progrs."""
    ok = torch.tensor([[True, False, False, False], [False, False, True, True]])
    b = torch.tensor([[0.1, 0.9, 0.2, 0.2], [0.5, 0.0, 1.0, 0.3]])
    adv, _, _ = compute_advantages(ok, b, "absolute", 1.5)
    # row 1: x = (1.15, 1.35, 0.3, 0.3), mean 0.775, std sqrt(0.9225 / 4) = 0.48023
    want = torch.tensor([[0.7809, 1.1973, -0.9891, -0.9891], [-0.4615, -1.2759, 1.4388, 0.2986]])
    assert torch.allclose(adv, want, atol=1e-4)
    ok = torch.tensor([[True, False, False, False]])
    b = torch.tensor([[0.2, 0.9, 0.1, 0.0]])
    adv, a_out, c = compute_advantages(ok, b, "absolute", lam=0.5)
    r = torch.tensor([[1.1, 0.45, 0.05, 0.0]])
    assert torch.allclose(adv, (r - r.mean()) / (r.std(correction=0) + progrs.ADV_EPS), atol=1e-6)
    assert torch.allclose(a_out, group_normalize(ok.float()))
    assert torch.allclose(c, outcome_conditioned_centering(b, ok))

@pytest.mark.parametrize("function", [compute_advantages, max_dominant_lam])
@pytest.mark.parametrize("mode", ["progrs_strict", "grpo"])
def test_an_unknown_mode_is_a_value_error_naming_every_valid_mode(function, mode):
    ok = torch.tensor([[True, False]])
    args = (ok, torch.zeros(1, 2), mode, 1.0) if function is compute_advantages else (8, mode)
    with pytest.raises(ValueError) as e:
        function(*args)
    named = set(re.findall(r"[\w-]+", str(e.value)))        # "progrs_strict" does not name progrs
    assert set(progrs.MODES) <= named and mode in named, str(e.value)

# Dominance: below max_dominant_lam(G, mode) every right rollout's A stays above every wrong one's

def test_dominance_violations_counts_pairs_not_rollouts():
    """Pairs (right i, wrong j) of one group with A_j >= A_i: one wrong rollout above two right ones
    is 2, three wrong above one right is 3; ties count; pairs never cross groups."""
    ok = torch.tensor([[True, True, False, False], [True, False, False, False]])
    adv = torch.tensor([[1.0, 2.0, 3.0, 0.0], [-1.0, 0.0, 1.0, -1.0]])
    assert dominance_violations(adv, ok) == 2 + 3
    assert dominance_violations(adv[:1], ok[:1]) == 2
    assert dominance_violations(torch.tensor([[1.0, 1.0]]), torch.tensor([[True, False]])) == 1
    assert dominance_violations(torch.tensor([[1.0, 0.5]]), torch.tensor([[True, False]])) == 0
    adv = torch.tensor([[1.0, 1.0, 0.5, 2.0], [0.3, -0.1, 0.3, 0.3]])
    ok = torch.tensor([[True, False, False, True], [True, False, False, True]])
    assert dominance_violations(adv, ok) == 1 + 2                     # ties count: A_j >= A_i
    # the second group's wrong rollouts sit above the first group's right ones: no pair
    assert dominance_violations(torch.tensor([[0.0, -1.0], [9.0, 5.0]]),
                                torch.tensor([[True, False]] * 2)) == 0
    # a wrong rollout below a right one is no violation, whichever column holds it
    assert dominance_violations(torch.tensor([[0.0, 1.0]]), torch.tensor([[False, True]])) == 0
    assert dominance_violations(torch.tensor([[1.0, 0.0]]), torch.tensor([[False, True]])) == 1

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

def worst_group(G, k, mode):
    """k right, G - k wrong: the widest c gap between a right and a wrong rollout (b 0 or 1)."""
    ok = torch.tensor([[True] * k + [False] * (G - k)])
    right = [0.0] + [1.0] * (k - 1) if mode == "progrs-strict" else [0.0] * k
    return ok, torch.tensor([right + [1.0] + [0.0] * (G - k - 1)], dtype=torch.float64)

def test_max_dominant_lam_is_the_smallest_ratio_of_outcome_gap_to_bonus_gap():
    """progrs and progrs-strict: min over k of (A_out right - A_out wrong) / (widest c gap), both
    read off actual groups (group_normalize with its eps, and the centering); pinned to 1e-9."""
    for mode in ("progrs", "progrs-strict"):
        for G in (3, 4, 5, 8, 16):
            ratios = []
            for k in range(1, G):
                ok, b = worst_group(G, k, mode)
                _, a_out, c = compute_advantages(ok, b, mode, 1.0)
                a_out = group_normalize(ok.double())
                gap = float(a_out[0, 0] - a_out[0, -1])
                widest = float(c[ok].min() - c[~ok].max()) * -1
                if widest > 0:
                    ratios.append(gap / widest)
            assert max_dominant_lam(G, mode) == pytest.approx(min(ratios), rel=1e-9), (mode, G)
    assert max_dominant_lam(8) == pytest.approx(2.58, abs=0.005)
    assert max_dominant_lam(8, "progrs-strict") == pytest.approx(1.33, abs=0.005)
    assert max_dominant_lam(64, "progrs-strict") == pytest.approx(1.03, abs=0.005)

def test_dominance_bound_at_group_size_two():
    """G = 2 (one right, one wrong): the lone wrong rollout's c is 0, so progrs and progrs-strict
    dominate at any lam (inf); absolute still ties at lam = 1; outcome never mixes in b (inf)."""
    assert max_dominant_lam(2, "progrs") == math.inf
    assert max_dominant_lam(2, "progrs-strict") == math.inf
    assert max_dominant_lam(2, "absolute") == 1.0
    assert max_dominant_lam(2, "outcome") == math.inf
    assert max_dominant_lam(8, "absolute") == 1.0 and max_dominant_lam(8, "outcome") == math.inf

@pytest.mark.parametrize("mode", progrs.MODES)
def test_max_dominant_lam_is_tight_in_every_mode(mode):
    """Just below the bound (1 - 1e-5) no group violates: every worst constructed group, and 3,000
    random groups per G with b in [0, 1], a third of the b's snapped to 0 or 1. Just above it
    (1 + 1e-5; absolute: at it, a tie) a worst constructed group violates."""
    gen = torch.Generator().manual_seed(0)
    for G in (2, 3, 4, 8, 16):
        bound = max_dominant_lam(G, mode)
        below = 1e6 if bound == math.inf else bound * (1 - 1e-5)
        b = torch.rand(3000, G, generator=gen, dtype=torch.float64)
        snap = torch.rand(3000, G, generator=gen) < 1 / 3
        b = torch.where(snap, b.round(), b)
        ok = torch.rand(3000, G, generator=gen) < 0.5
        assert dominance_violations(compute_advantages(ok, b, mode, below)[0], ok) == 0, G
        worst = [worst_group(G, k, mode) for k in range(1, G)]
        for ok, b in worst:
            assert dominance_violations(compute_advantages(ok, b, mode, below)[0], ok) == 0, G
        if bound == math.inf:
            continue
        above = bound if mode == "absolute" else bound * (1 + 1e-5)
        hits = [dominance_violations(compute_advantages(ok, b, mode, above)[0], ok)
                for ok, b in worst]
        assert max(hits) > 0, G

# Coherence: b = the mean over windows of 2 and 4 judged steps of mu * exp(-lam_var * sigma / mu)

def test_coherence_constant_volatile_bounds_and_edges():
    assert coherence_score([0.7] * 5) == pytest.approx(0.7)
    steady, volatile = [0.5, 0.5, 0.5, 0.5], [0.9, 0.1, 0.9, 0.1]
    assert coherence_score(volatile) < coherence_score(steady)
    assert coherence_score([]) == 0.0
    assert coherence_score([0.0, 0.0, 0.0]) == 0.0
    assert coherence_score([0.8]) == pytest.approx(0.8)              # fewer steps than any window
    assert coherence_score([0.5, math.nan, 0.9]) == coherence_score([0.5, 0.9])  # NaN: skipped
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        s = torch.rand(int(torch.randint(1, 12, (1,), generator=g)), generator=g)
        s[torch.rand(s.shape, generator=g) < 0.3] = 0.0
        r = coherence_score(s, lam_var=float(torch.rand(1, generator=g) * 5))
        assert 0.0 <= r <= 1.0 and math.isfinite(r)

def test_coherence_clamps_scores_to_0_1_and_computes_in_float64():
    """Scores are clamped to [0, 1] before the windows; the arithmetic is float64 whatever the input
    (a list of ints works; 0.1 and 0.3: 0.2 * exp(-0.5), exactly as in float64)."""
    assert coherence_score([-0.5, 0.5]) == coherence_score([0.0, 0.5])
    assert coherence_score([1.5, 3.0]) == 1.0 and coherence_score([2.0]) == 1.0
    assert coherence_score([1, 0, 1]) == coherence_score([1.0, 0.0, 1.0])
    assert coherence_score([0.1, 0.3]) == pytest.approx(0.2 * math.exp(-0.5), rel=1e-13, abs=0)
    as_float32 = coherence_score(torch.tensor([0.1, 0.3]))
    as_float64 = coherence_score(torch.tensor([0.1, 0.3]).double().tolist())
    assert as_float32 == pytest.approx(as_float64, rel=1e-13, abs=0)

def coherence_by_hand(s, windows=(2, 4), sliding=True):
    """The coherence rule spelled out: windows of min(W, S) steps, sliding by one."""
    per_scale = []
    for w in (min(w, len(s)) for w in windows):
        starts = range(0, len(s) - w + 1, 1 if sliding else w)
        r = []
        for x in (s[i:i + w] for i in starts):
            mu = sum(x) / w
            r.append(mu * math.exp(-math.sqrt(sum((v - mu) ** 2 for v in x) / w) / mu))
        per_scale.append(sum(r) / len(r))
    return sum(per_scale) / len(per_scale)

def test_coherence_slides_windows_of_two_and_four_steps():
    """3 steps: windows of 2 and of all 3; 5 and 6 steps: windows of 2 and 4, sliding by one."""
    s6 = [0.9, 0.5, 0.7, 0.2, 0.8, 0.6]
    want = {3: 0.535656, 5: 0.378149, 6: 0.403379}
    for n, value in want.items():
        assert coherence_score(s6[:n]) == pytest.approx(value, abs=1e-6)
        assert coherence_by_hand(s6[:n]) == pytest.approx(value, abs=1e-6)
    others = (dict(windows=(2, 3)), dict(windows=(2, 5)), dict(windows=(3, 4)), dict(sliding=False))
    for other in others:
        assert any(abs(coherence_by_hand(s6[:n], **other) - v) > 1e-3 for n, v in want.items())

# Fluent failures: wrong, judged, and b at least the median b of recent right rollouts

def test_fluent_failures_reach_the_median_of_the_pool_and_this_batch():
    """The threshold is the median of the pool plus this batch's right b's (b >= it counts); None
    when both are empty; a wrong rollout with no judged step never counts, however high its b."""
    b, ok = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([True, False, False])
    judged = torch.ones(3, dtype=torch.bool)
    assert fluent_failures(b, ok, judged, [0.4, 0.8]).tolist() == [False, True, False]  # median 0.4
    assert fluent_failures(b, ok, judged, [0.6, 0.8]).tolist() == [False, False, False]  # 0.6
    assert fluent_failures(b, ok, judged, [0.5, 0.5]).tolist() == [False, True, False]  # a tie
    assert fluent_failures(b, torch.zeros(3, dtype=torch.bool), judged, []) is None
    ff = fluent_failures(torch.tensor([0.5, 0.9, 0.9, 0.9]),
                         torch.tensor([True, False, False, True]),
                         torch.tensor([True, False, True, False]), [])
    assert ff.tolist() == [False, False, True, False]

# --------------------------------------------------------------------------------------------------
# Flags: one table, (tiny, LLM) default pairs filled by the model named, a range check per flag

TINY_TASK = HERE / "tiny_task"
TINY_MODEL = TINY_TASK / "model"
TINY_TEST = TINY_TASK / "test.jsonl"
TINY_TRAIN = TINY_TASK / "train.jsonl"

def parse(*flags):
    """The parsed command line, before apply_defaults."""
    return progrs.build_parser().parse_args(list(flags))

def test_apply_defaults_fills_the_named_models_column_and_keeps_what_was_given(tmp_path):
    """A model in tiny_task/ gets the tiny column, any other (a hub id, a folder elsewhere) the LLM
    column, --defaults overrides; flags given stay; --save-every defaults to --eval-every."""
    def filled(*flags):
        args = parse(*flags)
        return progrs.apply_defaults(args), args
    size, args = filled()                                             # the bundled tiny model
    assert size == "tiny"
    assert (args.eval_size, args.eval_every, args.steps, args.micro_batch) == (0, 20, 60, 128)
    assert args.lr == 1e-4 and args.data == progrs.TINY_DATA[0] and args.save_every == 20
    assert Path(args.data) == TINY_TRAIN
    assert filled("--model", str(progrs.TINY_TASK / "model_sparse"))[0] == "tiny"
    for model in ("Qwen/Qwen2.5-0.5B", "some-org/some-llm", str(tmp_path / "mine")):
        size, args = filled("--model", model)
        assert size == "llm"
        assert (args.data, args.eval_data, args.lr, args.max_new_tokens, args.micro_batch) == \
            ("gsm8k", "gsm8k", 1e-6, 512, 8)
        assert args.save_every == args.eval_every == 25
        assert args.eval_size == 500 and args.steps == 200
    size, args = filled("--model", "Qwen/Qwen2.5-0.5B", "--lr", "3e-6", "--data", "mine.jsonl")
    assert args.lr == 3e-6 and args.data == "mine.jsonl" and args.eval_data == "gsm8k"
    size, args = filled("--model", "some-org/some-llm", "--eval-size", "0", "--eval-every", "3",
                        "--save-every", "5")
    assert (args.eval_size, args.eval_every, args.save_every, args.steps) == (0, 3, 5, 200)
    assert filled("--model", "some-org/some-llm", "--defaults", "tiny")[0] == "tiny"
    assert filled("--model", str(tmp_path / "mine"), "--defaults", "tiny")[0] == "tiny"
    assert filled("--defaults", "llm")[0] == "llm"
    help_text = progrs.build_parser().format_help()
    assert "0.0001 tiny / 1e-06 LLM" in help_text and "--defaults" in help_text

def refused(*flags):
    """check_args on parsed flags: True if refused (naming the flag), False if accepted."""
    try:
        progrs.check_args(parse(*flags))
    except progrs.ProgrsError as e:
        assert flags[0].split("=")[0] in str(e)
        return True
    return False

def test_check_args_ranges_are_strict_or_inclusive_as_written_and_every_float_finite():
    """"> 0" refuses 0, ">= 0" accepts it, ">= 1" refuses 0; every float flag refuses inf, -inf and
    nan."""
    assert refused("--temperature", "0") and refused("--lr", "0")
    assert refused("--max-grad-norm", "0")
    assert not refused("--lam", "0") and not refused("--eval-size", "0")
    assert not refused("--kl-coef", "0") and not refused("--temperature", "0.01")
    assert refused("--eval-every", "0") and not refused("--eval-every", "1")
    assert refused("--micro-batch", "0") and not refused("--micro-batch", "1")
    assert refused("--seed", "-1") and not refused("--seed", "0")
    assert refused("--prm-quantile", "nan")
    floats = [flag for _, flag, kind, *_ in progrs.FLAGS if kind is float]
    assert len(floats) >= 7
    for flag in floats:
        for value in ("inf", "-inf", "nan"):
            assert refused(f"{flag}={value}"), (flag, value)

def test_first_line_of_an_error_is_its_first_line_or_its_type_and_attr_is_the_flags_name():
    assert progrs.first_line(OSError("disk full\nmore")) == "disk full"
    assert progrs.first_line(ValueError()) == "ValueError"
    assert progrs.first_line(ValueError(" \n ")) == "ValueError"
    assert progrs.attr("--prm-quantile") == "prm_quantile" and progrs.attr("--lr") == "lr"

def test_a_model_in_tiny_task_gets_the_tiny_defaults_by_any_path(monkeypatch, tmp_path):
    outside = tmp_path / "model"
    shutil.copytree(TINY_MODEL, outside)
    cases = [(HERE, "tiny_task/model", "tiny"), (HERE, "./tiny_task/model", "tiny"),
             (TINY_TASK, "model", "tiny"), (tmp_path, str(TINY_MODEL), "tiny"),
             (HERE, str(outside), "llm"), (tmp_path, "model", "llm")]
    for cwd, path, column in cases:
        monkeypatch.chdir(cwd)
        args = progrs.build_parser().parse_args(["--model", path])
        lr = 1e-4 if column == "tiny" else 1e-6
        assert (progrs.apply_defaults(args), args.lr) == (column, lr)

# --------------------------------------------------------------------------------------------------
# Data: JSONL records {"question", "answer"}; GSM8K by name; the prompt

# the real GSM8K test split, for the tests that read it: PROGRS_GSM8K_TEST, else beside the checkout
GSM8K = Path(os.environ.get("PROGRS_GSM8K_TEST")
             or HERE.parent / "shared" / "data" / "gsm8k_test.jsonl")
NEEDS_GSM8K = pytest.mark.skipif(not GSM8K.exists(),
                                 reason="no GSM8K test file (set PROGRS_GSM8K_TEST)")

@pytest.fixture(scope="module")
def tiny():
    """The bundled tiny model and its tokenizer, on the CPU."""
    torch.manual_seed(0)
    model, tok = progrs.load_model(str(TINY_MODEL), torch.device("cpu"))
    return model, tok

def no_amp():
    return torch.autocast("cpu", enabled=False)

def jsonl(tmp_path, text, name="d.jsonl", **kw):
    path = tmp_path / name
    path.write_text(text, **kw)
    return path

def test_load_problems_errors_are_one_line_naming_what_is_wrong(tmp_path):
    """A missing file, non-UTF-8 bytes, bad JSON, a record that is not an object and a file with no
    records (empty, or blank lines only): each one line naming the file (and the line), with what
    was expected."""
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
    assert message(path) == (f"{path}:2: not valid JSON (Expecting property name enclosed in "
                             'double quotes); expected one {"question": ..., "answer": ...} object '
                             "per line")
    for text in ("", "\n \n", "\n\n  \n\t\n"):
        jsonl(tmp_path, text)
        assert message(path) == f"{path}: no records ({expected})"
    for record in ("[1, 2]", '"q"', "3", "null"):
        jsonl(tmp_path, record + "\n")
        assert message(path) == (f"{path}:1: expected an object with a string 'question' and a "
                                 "string or number 'answer'")
    jsonl(tmp_path, json.dumps({"question": "q?", "answer": " #### "}) + "\n")
    assert message(path) == f"{path}:1: empty 'question' or empty final answer"
    jsonl(tmp_path, '{"question": "q?", "answer": NaN}\n')
    assert message(path) == f"{path}:1: expected a finite number 'answer', got nan"

@pytest.mark.parametrize("record,needle", [
    ('"question": "q?", "answer": true', "expected an object"),
    ('"question": "q?", "answer": false', "expected an object"),
    ('"question": "q?", "answer": null', "expected an object"),
    ('"question": "q?", "answer": ["2"]', "expected an object"),
    ('"question": "q?", "answer": {"a": 1}', "expected an object"),
    ('"question": "q?", "answer": ""', "empty"),
    ('"question": "q?", "answer": "  "', "empty"),
    ('"question": "q?", "answer": "x ####  "', "empty"),
    ('"question": " ", "answer": "1"', "empty 'question'"),
    ('"question": "q?", "answer": NaN', "expected a finite"),
    ('"question": "q?", "answer": Infinity', "expected a finite"),
    ('"question": "q?", "answer": -Infinity', "expected a finite"),
])
def test_answers_that_are_not_strings_or_finite_numbers_are_refused_naming_file_and_line(
        tmp_path, record, needle):
    """An answer not a string or number, an empty answer or final answer after ####, an empty
    question, NaN or +-Infinity: one error naming the file and the line (blank lines counted)."""
    good = json.dumps({"question": "q?", "answer": "1"})
    path = jsonl(tmp_path, good + "\n\n{" + record + "}\n")
    with pytest.raises(progrs.ProgrsError, match=rf"d\.jsonl:3: {needle}"):
        load_problems(path)

def test_a_byte_order_mark_is_accepted_and_questions_and_golds_are_stripped(tmp_path):
    """A UTF-8 byte-order mark at the start (some editors write one) is dropped; the question is
    stripped and a rationale's gold is what follows its last ####; numbers are golds as text."""
    text = json.dumps({"question": "  What is 2 + 3?\n", "answer": "2 + 3 = 5\n#### 5 "}) + "\n"
    path = jsonl(tmp_path, text, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_problems(path) == [{"question": "What is 2 + 3?", "gold": "5"}]
    assert progrs.parse_gold("a #### 3 #### 4 ") == "4" and progrs.parse_gold(" 7 ") == "7"
    assert progrs.parse_gold("so #### 12 apples") == "12 apples"
    answers = (42, 2.5, "7")
    jsonl(tmp_path, "".join(json.dumps({"question": "q?", "answer": a}) + "\n" for a in answers))
    assert [p["gold"] for p in load_problems(path)] == ["42", "2.5", "7"]

# GSM8K by name (the network is never touched: urlopen is replaced, or points at a closed port)

def fake_release(monkeypatch, payload: bytes, split="test"):
    """Pin `payload` as a split, served by a replaced urlopen; returns the URLs asked."""
    asked = []
    monkeypatch.setitem(progrs.GSM8K_SPLITS, split,
                        (payload.count(b"\n"), hashlib.sha256(payload).hexdigest()))

    def urlopen(url, timeout=None):
        asked.append(url)
        return io.BytesIO(payload)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked

def test_gsm8k_is_downloaded_once_checked_and_cached(tmp_path, monkeypatch):
    payload = b"".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n"
                                   f"#### {i + 1}"}).encode() + b"\n" for i in range(5))
    monkeypatch.setenv("PROGRS_CACHE", str(tmp_path))
    asked = fake_release(monkeypatch, payload)
    problems = progrs.load_data("gsm8k", "test", "--eval-data")
    assert [p["gold"] for p in problems] == ["1", "2", "3", "4", "5"]
    assert asked == [f"{progrs.GSM8K_URL}/test.jsonl"]
    assert (tmp_path / "gsm8k_test.jsonl").read_bytes() == payload
    progrs.load_data("gsm8k", "test", "--eval-data")
    assert len(asked) == 1                                            # cached: no second download

def test_gsm8k_with_the_wrong_content_or_no_network_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request
    monkeypatch.setenv("PROGRS_CACHE", str(tmp_path))
    fake_release(monkeypatch, b'{"question": "q", "answer": "1"}\n')
    progrs.GSM8K_SPLITS["test"] = (1, "0" * 64)                      # a release we did not pin
    with pytest.raises(progrs.ProgrsError, match="not the pinned GSM8K test split.*--eval-data"):
        progrs.load_data("gsm8k", "test", "--eval-data")
    assert not list(tmp_path.iterdir())                               # nothing cached

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(progrs.ProgrsError) as e:
        progrs.load_data("gsm8k", "train", "--data")
    msg = str(e.value)
    assert "\n" not in msg and "train.jsonl" in msg and "--data path/to/gsm8k_train.jsonl" in msg

@NEEDS_GSM8K
def test_pinned_gsm8k_test_split_is_the_shared_copy():
    import hashlib
    data = GSM8K.read_bytes()
    assert (data.count(b"\n"), hashlib.sha256(data).hexdigest()) == progrs.GSM8K_SPLITS["test"]

def test_build_prompt_gives_the_chat_template_a_worked_example_then_the_question(tiny):
    """--chat: a user turn (the chat instruction and the example), the example's solution as the
    assistant's, then the question, and the generation prompt; the plain prompt is the warm start's;
    a tokenizer without a template is one line naming --chat."""
    tok = copy.deepcopy(tiny[1])
    with pytest.raises(progrs.ProgrsError, match="^--chat: this tokenizer has no chat template"):
        progrs.build_prompt("What is 2 + 2?", tok, chat=True)
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    prompt = progrs.build_prompt("What is 2 + 2?", tok, chat=True)
    example, solution = progrs.CHAT_EXAMPLE
    instruction = progrs.CHAT_INSTRUCTION
    assert prompt == (f"<user>{instruction}\n{example}\n<assistant>{solution}\n"
                      f"<user>{instruction}\nWhat is 2 + 2?\n<assistant>")
    assert [progrs.split_steps(solution), progrs.extract_answer(solution)] == [
        ["Given out: 15 + 4 = 19", "Left: 24 - 19 = 5"], "5"]
    assert [progrs.check_equations(s) for s in progrs.split_steps(solution)] == [(1, 0), (1, 0)]
    gsm8k = GSM8K.read_text() if GSM8K.exists() else ""
    assert json.dumps(example) not in gsm8k           # the example is no GSM8K test problem
    plain = progrs.build_prompt("What is 2 + 2?")
    assert plain == f"{progrs.INSTRUCTION}\nQuestion: What is 2 + 2?\nSolution:\n"

def unwritable_folder():
    """An existing folder this process cannot write (root ignores file modes: /sys is read-only)."""
    folder = Path("/sys/kernel")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return folder
    pytest.skip("no read-only folder here")

def test_gsm8k_goes_into_a_new_cache_whole_and_an_unwritable_cache_is_one_line(tmp_path,
                                                                               monkeypatch):
    payload = b'{"question": "What is 1 + 1?", "answer": "1 + 1 = 2\\n#### 2"}\n'
    fake_release(monkeypatch, payload)
    fresh = tmp_path / "a fresh machine" / "cache"          # no folder yet: it is made
    monkeypatch.setenv("PROGRS_CACHE", str(fresh))
    assert progrs.load_data("gsm8k", "test", "--eval-data")[0]["gold"] == "2"
    assert sorted(p.name for p in fresh.iterdir()) == ["gsm8k_test.jsonl"]
    killed = tmp_path / "killed"
    monkeypatch.setenv("PROGRS_CACHE", str(killed))
    real_write = Path.write_bytes

    def dies_midway(self, data):
        real_write(self, data[:len(data) // 2])
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_bytes", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        progrs.load_data("gsm8k", "test", "--eval-data")
    monkeypatch.setattr(Path, "write_bytes", real_write)
    assert not (killed / "gsm8k_test.jsonl").exists()    # half a download never looks cached
    assert progrs.load_data("gsm8k", "test", "--eval-data")[0]["gold"] == "2"
    monkeypatch.setenv("PROGRS_CACHE", str(unwritable_folder() / "progrs"))
    with pytest.raises(progrs.ProgrsError) as e:
        progrs.load_data("gsm8k", "test", "--eval-data")
    assert str(e.value).startswith("--eval-data gsm8k: cannot write the cache")
    assert "PROGRS_CACHE" in str(e.value) and "\n" not in str(e.value)

# --------------------------------------------------------------------------------------------------
# Rollouts: one batched generate() per step, our sampling settings only, rows ending at the answer
# line or EOS

@pytest.mark.parametrize("rows,stopped_at,mask,truncated", [
    ([[5, 6, 9, 9, 9],                                                # pad == eos, as in Qwen2.5
      [5, 6, 7, 8, 4],                                                # truncated: no EOS
      [9, 9, 9, 9, 9]], None,
     [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], [False, True, False]),
    ([[5, 6, 7, 9, 9],                                                # EOS at 4, answer line at 2
      [5, 6, 9, 9, 9],                                                # EOS before any answer stop
      [5, 6, 7, 8, 4]], [2, 0, 5],                                    # stopped after 5 exactly
     [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], [False, False, False]),
    ([[5, 6, 7, 9, 9]], [1], [[1, 0, 0, 0, 0]], [False]),             # one token: "4\n"
])
def test_completion_mask_ends_at_the_first_eos_kept_or_the_answer_line(rows, stopped_at, mask,
                                                                        truncated):
    """A row ends at its first EOS (kept in the mask, what follows dropped) or where it stopped at
    its answer line; truncated rows are those that hit the cap."""
    stopped = None if stopped_at is None else torch.tensor(stopped_at)
    got_mask, got_truncated = progrs.completion_mask(torch.tensor(rows), [9], stopped)
    assert got_mask.tolist() == mask and got_truncated.tolist() == truncated

def test_generate_rollouts_masks_and_texts(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    prompts = [progrs.build_prompt("What is 12 + 30 - 5?")]
    batch = progrs.generate(model, tok, prompts, 4, 48, 1.0, no_amp)
    assert batch["input_ids"].shape[0] == 4 and len(batch["texts"]) == 4
    lengths = batch["completion_mask"].sum(1)
    completions = batch["input_ids"][:, batch["prompt_len"]:]
    for row, n, trunc in zip(completions, lengths, batch["truncated"]):
        if not trunc:
            assert row[n - 1] == tok.eos_token_id                     # the EOS is inside the mask
            assert (row[:n - 1] != tok.eos_token_id).all()

def test_stop_at_answer_reads_a_token_beyond_the_tokenizer_as_no_line_end(tiny):
    """Hub models pad their vocabulary past the tokenizer (Qwen2.5: 151,936 rows, 151,665
    tokens)."""
    tok = tiny[1]
    stop = progrs.StopAtAnswer(tok, 0)
    newline = int(progrs.newline_tokens(tok).nonzero()[0])
    answer = tok("Answer: 4")["input_ids"]
    ids = torch.tensor([answer + [newline], answer + [len(tok)], answer + [len(tok) + 7]])
    assert stop(ids).tolist() == [True, False, False]

def copy_of(model):
    m = type(model)(model.config)
    m.load_state_dict(model.state_dict())
    m.generation_config = copy.deepcopy(model.generation_config)
    return m.eval()

def tiny_task_tool(name):
    """A script of tiny_task/, imported the way its scripts import each other (on first use)."""
    import importlib
    folder = str(TINY_TASK)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)

def never_stopping(model, tok):
    """A copy of the tiny model that writes a newline where it would stop: it rambles on."""
    m = copy_of(model)
    m.lm_head.register_forward_hook(tiny_task_tool("rambling").never_stops(tok))
    return m

def test_completions_end_at_their_answer_line_even_on_a_model_that_never_stops(tiny):
    model, tok = tiny
    rambler = never_stopping(model, tok)
    prompts = [progrs.build_prompt(q) for q in ("What is 12 + 30 - 5?", "What is 60 - 18 + 7 + 2?")]
    torch.manual_seed(0)
    batch = progrs.generate(rambler, tok, prompts, 4, 64, 1.0, no_amp)
    n_answered = 0
    for text, n, trunc in zip(batch["texts"], batch["completion_mask"].sum(1), batch["truncated"]):
        found = progrs.find_answer(text)
        if found is not None:                                   # ends right after the answer line
            n_answered += 1
            assert found.ended and found.end == len(text) and not trunc and n < 64
    assert n_answered >= 6
    # each answered row's mask ends on the token that ends its answer line, whatever the others did
    completions = batch["input_ids"][:, batch["prompt_len"]:]
    kept = [row[m] for row, m in zip(completions, batch["completion_mask"])]
    newline = progrs.newline_tokens(tok)
    ends = [bool(newline[row[-1]]) for row, t in zip(kept, batch["texts"]) if progrs.find_answer(t)]
    assert all(ends) and len({len(row) for row in kept}) > 1
    # the same rollouts without the stop run to the cap: what the answer-line rule cuts off
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    seqs = rambler.generate(**enc, do_sample=True, top_k=0, max_new_tokens=64,
                            num_return_sequences=4, pad_token_id=tok.pad_token_id)
    assert seqs.shape[1] - enc["input_ids"].shape[1] == 64

def test_sampling_ignores_the_models_generation_config_and_matches_the_trainer(tiny, monkeypatch):
    """What a hub model ships in generation_config (min_p, top_k, repetition_penalty) must not reach
    the sampler: the sampler's own scores give the same log-probs as the trainer's forward pass."""
    model, tok = tiny
    m = copy_of(model)
    m.generation_config.update(do_sample=True, min_p=0.2, top_k=5, repetition_penalty=1.5,
                               temperature=0.3)
    shipped = m.generation_config.to_dict()
    captured = []
    real_generate = m.generate

    def spy(*args, **kwargs):
        out = real_generate(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        captured.append(out)
        return out.sequences
    monkeypatch.setattr(m, "generate", spy)
    prompts = [progrs.build_prompt(q) for q in ("What is 3 + 4?", "What is 47 + 28 - 19 + 6?")]
    torch.manual_seed(1)
    batch = progrs.generate(m, tok, prompts, 3, 24, 1.0, no_amp)
    Tp, mask = batch["prompt_len"], batch["completion_mask"]
    comp = batch["input_ids"][:, Tp:]
    scores = torch.stack(captured[0].scores, 1)                       # (B, T, V) as sampled from
    sampler = scores.log_softmax(-1).gather(-1, comp.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        trainer = progrs.token_logprobs(m, batch["input_ids"], batch["attention_mask"], Tp, 1.0,
                                        no_amp)
    assert torch.allclose(trainer[mask], sampler[mask], atol=1e-4)
    assert m.generation_config.to_dict() == shipped                   # put back as it was

def test_chat_prompts_get_their_special_tokens_once(tiny):
    from tokenizers.processors import TemplateProcessing
    model, tok = tiny
    tok = copy.deepcopy(tok)
    eos = tok.eos_token
    tok.chat_template = ("{% for m in messages %}" + eos + "user: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}Solution:\n{% endif %}")
    # a tokenizer that adds a special token at the start, as Llama-style tokenizers add BOS
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{eos} $A", special_tokens=[(eos, tok.eos_token_id)])
    assert tok("x")["input_ids"][0] == tok.eos_token_id
    prompt = progrs.build_prompt("What is 3 + 4?", tok, chat=True)
    assert prompt.startswith(eos + "user: " + progrs.CHAT_INSTRUCTION)
    assert prompt.endswith("Solution:\n")
    torch.manual_seed(0)
    batch = progrs.generate(model, tok, [prompt], 2, 8, 1.0, no_amp, chat=True)
    ids = batch["input_ids"][0, :batch["prompt_len"]].tolist()
    assert ids[0] == tok.eos_token_id and ids[1] != tok.eos_token_id  # the template's one, not two

def with_biased_head(model, bias):
    """A copy of the model whose LM head is its own weight plus `bias` (V,)."""
    model = copy.deepcopy(model)
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(bias)
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False
    return model

def test_rows_stop_at_the_tokenizers_eos_even_when_the_generation_config_names_none(tiny):
    """A model that says EOS at once: one-token completions (EOS kept in the mask, not in the text),
    none truncated, although its generation_config names no EOS."""
    tok = tiny[1]
    model = with_biased_head(tiny[0], 100.0 * (torch.arange(len(tok)) == tok.eos_token_id))
    model.generation_config.eos_token_id = None
    torch.manual_seed(0)
    out = progrs.generate(model, tok, [progrs.build_prompt("What is 3 + 4?")], 3, 8, 1.0, no_amp)
    assert out["completion_mask"].sum(1).tolist() == [1, 1, 1]
    assert out["truncated"].tolist() == [False] * 3 and out["texts"] == [""] * 3

def test_rows_stop_at_end_of_text_when_the_eos_is_another_token(tiny):
    """An instruct tokenizer (Qwen2.5-Instruct: eos <|im_end|>, pad <|endoftext|>) whose folder's
    generation_config names only <|im_end|>: a model that says <|endoftext|> stops there too."""
    tok = copy.deepcopy(tiny[1])
    tok.add_special_tokens({"eos_token": "<|im_end|>"})
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.pad_token_id == eot != im_end
    model = with_biased_head(tiny[0], 100.0 * (torch.arange(tiny[0].config.vocab_size) == eot))
    model.generation_config.eos_token_id = im_end
    torch.manual_seed(0)
    out = progrs.generate(model, tok, [progrs.build_prompt("What is 3 + 4?")], 3, 8, 1.0, no_amp)
    assert out["completion_mask"].sum(1).tolist() == [1, 1, 1]
    assert out["truncated"].tolist() == [False] * 3

def test_each_prompt_of_a_batch_gets_the_completion_it_gets_alone(tiny):
    """Prompts of different lengths in one batch (left padding): greedy completions as if each ran
    alone."""
    model, tok = tiny
    questions = ("What is 3 + 4?", "What is 47 + 28 - 19 + 6 - 12 + 30?")
    prompts = [progrs.build_prompt(q) for q in questions]
    assert len(set(len(tok(p)["input_ids"]) for p in prompts)) == 2
    together = progrs.generate(model, tok, prompts, 1, 40, 0.0, no_amp)["texts"]
    alone = [progrs.generate(model, tok, [p], 1, 40, 0.0, no_amp)["texts"][0] for p in prompts]
    assert together == alone and all("Answer:" in t for t in alone)

# --------------------------------------------------------------------------------------------------
# Verifier: exact match on the first committed answer line; steps are the lines before it

@pytest.mark.parametrize("text,gold,expected", [
    ("so \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}", True),        # nested braces
    ("\\boxed{5}.\nso also \\boxed{7}", "5", True),                   # the first committed answer
    ("\\boxed{3} then \\boxed{\\sqrt{16}}", "\\sqrt{16}", False),      # two answers on one line
    ("1 + 1 = 2\nAnswer: 2", "2", True),
    ("Answer: 5\nQuestion: What is 3 + 4?\nAnswer: 7", "5", True),    # a base model rambling on:
    ("Answer: 5\nQuestion: What is 3 + 4?\nAnswer: 7", "7", False),   # only the first answer counts
    ("rationale\n#### 1,234", "1234", True),                          # thousands comma
    ("Answer: $18.", "18", True),                                     # $ and trailing period
    ("**Answer:** 18", "18", True),                                   # markdown emphasis
    ("**Answer: 18**", "18", True),
    ("**Answer**: 18", "18", True),
    ("2 + 3 = 5\n**Answer:**\n**Answer:** 5", "5", True),             # stars alone: no answer yet
    ("ANSWER: 18", "18", True),
    ("The final answer is \\boxed{\\$18}.", "18", True),               # \$ inside a box
    ("Answer: \\$18", "18", True),
    ("Answer: $1,234.00 per year", "1234", True),
    ("Answer: 18 dollars", "18", True),                               # a trailing unit word
    ("Answer: 50%", "50", True),                                      # percent
    ("Answer: 72.0", "72", True),
    ("Answer: -3", "-3", True),
    ("Answer: 3", "-3", False),
    ("Answer: -5", "5", False),                                       # the sign is the value's
    ("Answer: -5", "-5", True),
    ("Answer: -1,250.50 dollars", "-1250.5", True),
    ("Answer: 5 or 6", "5", False),                                   # two different numbers
    ("Answer: 18 = 3 * 6", "18", False),
    ("Answer: 10-20", "10", False),                                   # only a range
    ("Answer: between 10 and 20", "20", False),
    ("the answer is 72", "72", False),                                # no marker: no guessing
    ("Answer:", "72", False),
    ("", "72", False),                                                # no answer at all
    ("Answer: seventy-two", "72", False),
    ("\\boxed{72", "72", False),                                      # unclosed box, no fallback
    ("Answer: banana", "banana", True),                               # non-numeric: string match
])
def test_is_correct(text, gold, expected):
    assert is_correct(text, gold) is expected

@pytest.mark.parametrize("text,answer", [
    ("", None), ("\n\n", None), ("}}{{", None), ("\\boxed{", None), ("12 + 3 = 15", None),
    ("Answer:\n\n", None),                                            # garbage: no answer
    ("the set {1, 2}\nAnswer: 5", "5"),                               # plain braces are no box
    ("\\boxed{3} and \\boxed{4}", "3 4"),                             # two boxes on a line: one
    ("**Answer:** 18", "18"),                                         # the stars dropped
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer

@pytest.mark.parametrize("pred,gold,expected", [
    ("-5", "5", False), ("5", "-5", False), ("-5", "-5", True), ("5", "5", True),
    # a numeric gold like "$18", "1,234" or "18." is a number; ".5" or "5X" is compared as text
    ("18 dollars", "$18", True), ("18 dollars", "18.", True), ("$1,234.00 per year", "1,234", True),
    ("5", ".5", False), ("5", "5X", False),
    # any other gold: without $ and * anywhere and one trailing period, nothing else
    ("$abc", "abc", True), ("**abc**", "abc", True), (" abc. ", "abc", True), ("abc", "abc.", True),
    (".abc", "abc", False), ("abc..", "abc", False), ("a b c", "abc", False), ("ABC", "abc", False),
])
def test_is_correct_matches_a_numeric_gold_by_value_and_any_other_as_cleaned_text(
        pred, gold, expected):
    """answers_match, is_correct's comparison of the answer line's text with the gold."""
    assert progrs.answers_match(pred, gold) is expected

def test_find_answer_marks_where_the_answer_line_ends():
    """end is the index just past the answer line: its newline if it has one (ended), else the
    text's end; only \\boxed{ opens a box."""
    text = "3 + 4 = 7\nAnswer: 7\nQuestion: next"
    found = progrs.find_answer(text)
    assert found.answer == "7" and text[found.start:found.end] == "Answer: 7\n" and found.ended
    assert not progrs.find_answer("3 + 4 = 7\nAnswer: 7").ended      # no newline yet: not finished
    found = progrs.find_answer("Answer: 7")
    assert (found.start, found.end, found.ended) == (0, 9, False)
    found = progrs.find_answer("x\nAnswer: 7\nmore")
    assert (found.start, found.end, found.ended) == (2, 12, True)
    assert progrs._closed_boxes("{x} \\boxed{5}") == [(11, 12)]

def test_split_steps_drops_blank_lines_and_the_answer_line():
    text = "47 + 28 = 75\n\n75 - 19 = 56\nAnswer: 56\ntrailing"
    assert split_steps(text) == ["47 + 28 = 75", "75 - 19 = 56"]
    assert split_steps("a\nb") == ["a", "b"]                          # no answer: every line
    assert split_steps("Answer: 5") == []

@NEEDS_GSM8K
def test_gsm8k_rationales_verify_against_their_own_answers_only():
    from decimal import Decimal
    problems = load_problems(GSM8K)
    rationales = [json.loads(line)["answer"] for line in GSM8K.open()]
    assert len(problems) == len(rationales) == 1319
    assert all(is_correct(r, p["gold"]) for r, p in zip(rationales, problems))
    # paired with another problem, a rationale verifies only when the two golds are the same number
    # (15 neighbouring pairs in this file share their gold): no false positive
    value = [Decimal(p["gold"].replace(",", "")) for p in problems]   # golds like "1,450,000"
    for i, r in enumerate(rationales):
        j = (i + 1) % len(problems)
        assert is_correct(r, problems[j]["gold"]) == (value[i] == value[j])

# --------------------------------------------------------------------------------------------------
# Toy PRM: each step's arithmetic checked alone, a Beta belief read at its quantiles

@pytest.mark.parametrize("step,expected", [
    ("47 + 28 - 19 = 56", (1, 0)),
    ("47 + 28 = 74", (0, 1)),
    ("She makes 9 * 2 = $<<9*2=18>>18 a day", (2, 0)),                # GSM8K annotation + text
    ("1,000 + 200 = 1,200 and 10 / 4 = 2.5", (2, 0)),
    ("2 + 2 = 4 and 3 + 3 = 7", (1, 1)),                              # one true, one false
    ("3 + 3 = 7 and 2 + 2 = 4", (1, 1)),
    ("$5 + $3 = $8", (1, 0)),
    ("Step 1: 3 x 4 = 12", (1, 0)),
    ("3+4=7", (1, 0)),                                                # no spaces needed
    ("3+4=8", (0, 1)),
    ("9 * 2 = 18 + 3 = 21", (1, 0)),                 # a running chain: only "18 + 3 = 21" is whole
    ("10000000 / 3 = 3333333.3", (1, 0)),                             # within rel 1e-6
    ("0.1 + 0.2 - 0.3 = 0", (1, 0)),                                  # within abs 1e-6
    ("60g * 4/5 = 240g/5 = 48 grams", (0, 0)),                        # words, fractions: unjudged
    ("5 - 1 - 1/2 = 3 1/2 hours", (0, 0)),
    ("3 / 6 = 50%", (0, 0)),
    ("3x + 4 = 28", (0, 0)),                                          # algebra, not arithmetic
    ("120 – 80 - 15 = 25", (1, 0)),                                   # an en dash is a minus
    ("2, 3 + 4 = 7", (1, 0)),                                         # a list, then an equation
    ("-3 + 5 = 2", (1, 0)),
    ("then 7 / 0 = 3", (0, 0)),                                       # not checkable
    ("no equation here, 42", (0, 0)),
    ("x = 5", (0, 0)),                                                # no arithmetic
    ("we have 12 = 13", (0, 0)),                                      # no operator on the left
    ("total.(2 + 3) = 6", (0, 0)),                                    # a start glued to a word
    ("__import__('os') + 1 = 2", (0, 0)),                             # only numbers are parsed
    ("1e999 + 1 = 2", (0, 0)),                                        # not a clean number
    ("2 + 2 = 4" + "0" * 308, (0, 0)),                                # too many digits: no evidence
    ("+".join(["1"] * 3000) + " = 3000", (0, 0)),                     # too long: no evidence
])
def test_check_equations(step, expected):
    assert check_equations(step) == expected

def test_toy_prm_true_false_and_unjudged_steps_are_beta_quantiles_with_4_pseudo_counts():
    """True step: t^(1/5); false step: 1 - (1 - t)^(1/5), at taus 0.1, 0.5, 0.9 (non-decreasing, a
    true step high, a false one low); no equation: NaN, no opinion."""
    steps = ["47 + 28 = 75", "75 - 19 = 55", "so we subtract"]
    q = ToyPRM().score("What is 47 + 28 - 19?", steps)
    assert q.dtype == torch.float32 and q.shape == (3, len(ToyPRM.taus)) == (3, 3)
    assert (q[:2, 1:] >= q[:2, :-1]).all()                            # quantiles non-decreasing
    assert q[0, 0] > 0.5 > q[1, 2]                                    # true high, false low
    assert q[0].tolist() == pytest.approx([t ** 0.2 for t in (0.1, 0.5, 0.9)], abs=1e-6)
    assert q[1].tolist() == pytest.approx([1 - (1 - t) ** 0.2 for t in (0.1, 0.5, 0.9)], abs=1e-6)
    assert q[0].tolist() == pytest.approx([0.63, 0.87, 0.98], abs=0.005)
    assert q[1].tolist() == pytest.approx([0.02, 0.13, 0.37], abs=0.005)
    assert q[2].isnan().all()

def test_a_step_with_one_true_and_one_false_equation_is_judged_false():
    """The false equation wins, in either order: the step scores as a false step."""
    prm = ToyPRM()
    false_row = prm.score("", ["3 + 3 = 7"])[0]
    for step in ("2 + 2 = 4 and 3 + 3 = 7", "3 + 3 = 7 and 2 + 2 = 4"):
        assert torch.equal(prm.score("", [step])[0], false_row)
    assert (false_row < prm.score("", ["2 + 2 = 4"])[0]).all()

def test_prose_steps_are_neutral_and_stacked_equations_earn_nothing_more():
    prm, question = ToyPRM(), "What is 47 + 28 - 19?"

    def b(text):
        return coherence_score(prm.score(question, split_steps(text))[:, 0])
    bare = "47 + 28 = 75\n75 - 19 = 56\nAnswer: 56"
    prose = ("First add the two numbers.\n47 + 28 = 75\nThen take away 19.\n75 - 19 = 56\nSo:\n"
             "Answer: 56")
    stacked = "47 + 28 = 75 and 28 + 47 = 75 and 75 = 70 + 5 = 75\n75 - 19 = 56\nAnswer: 56"
    assert b(bare) == b(prose) == b(stacked) > 0.5
    assert b("Let me think.\nAnswer: 56") == 0.0                       # no judged step: no credit

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

def test_safe_eval_reads_unicode_operators_and_refuses_what_is_not_arithmetic():
    """÷ and the minus sign are operators; names, powers, not, huge or non-finite values give None,
    never an exception; at most MAX_EXPR characters and MAX_DIGITS digits per number."""
    assert progrs.safe_eval("12 ÷ 4") == 3.0 and progrs.safe_eval("7 − 2") == 5.0
    junk = ("abc", "-abc", "abc + 1", "1 + abc", "2 ** 3", "not 1", "1e308 * 10", "-(1e308 * 10)")
    for text in junk:
        assert progrs.safe_eval(text) is None, text
    e120 = "+".join(["1"] * 60) + "0"
    assert len(e120) == progrs.MAX_EXPR and progrs.safe_eval(e120) == 69.0
    assert progrs.safe_eval(e120 + "0") is None
    assert progrs.safe_eval("12345678901234 + 1") == 12345678901235.0                   # 14 digits
    assert progrs.safe_eval("123456789012345 + 1") == 123456789012346.0                 # 15 digits
    assert progrs.safe_eval("1234567890123456 + 1") is None                             # 16 digits

def lhs(text):
    return progrs._lhs_before(text, text.index("="))

def test_lhs_before_finds_the_arithmetic_run_that_ends_at_the_equals_sign():
    """The left side starts at a number, sign or parenthesis after prose, a list's ", " or a
    sentence's period; it keeps decimals; a start glued to a word or period, or over MAX_EXPR
    characters, is None."""
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
    assert len(run) == progrs.MAX_EXPR and lhs(run + "= 31") == run
    assert lhs("1" + run + "= 31") is None

# --------------------------------------------------------------------------------------------------
# Models from a folder or the hub: checked before loading, fp32 weights, one line on failure

def test_check_source_names_what_is_wrong_with_a_model_folder_before_any_loading(tmp_path):
    expected = ("(expected a hub id or a saved model's folder: config.json, weights and tokenizer "
                "files)")
    a_file, bare, no_tok = tmp_path / "f.txt", tmp_path / "bare", tmp_path / "no_tok"
    a_file.write_text("x")
    bare.mkdir()
    no_tok.mkdir()
    (no_tok / "config.json").write_text("{}")
    cases = ((a_file, "a file"), (tmp_path / "missing", "no such folder"),
             ("no_such_model_folder", "no such folder"), ("./no_such_model", "no such folder"),
             (bare, "no config.json in this folder"), (no_tok, "no tokenizer files in this folder"))
    for name, problem in cases:
        with pytest.raises(progrs.ProgrsError) as e:
            progrs.check_source("--prm", str(name))
        assert str(e.value) == f"--prm {name}: {problem} {expected}"
    for fine in ("Qwen/Qwen2.5-0.5B", "org/name.v2", str(TINY_MODEL)):   # hub ids, a saved folder
        progrs.check_source("--model", fine)

def test_from_pretrained_loads_fp32_weights_and_gives_a_tokenizer_without_pad_its_eos(tmp_path):
    """fp32 master weights from a bf16 checkpoint; pad = EOS when the tokenizer names no pad; a
    missing folder is one line naming the flag it came from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    bf16 = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.bfloat16)
    bf16.save_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "m")
    assert AutoTokenizer.from_pretrained(tmp_path / "m").pad_token is None
    model, tok = progrs.load_model(str(tmp_path / "m"), torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert tok.pad_token == tok.eos_token is not None and tok.padding_side == "left"
    with pytest.raises(progrs.ProgrsError, match=r"^--prm \S+nowhere: no such folder"):
        progrs.load_model(str(tmp_path / "nowhere"), torch.device("cpu"), flag="--prm")

def test_a_model_whose_logits_are_not_a_linear_head_is_refused(monkeypatch):
    """token_logprobs computes the head itself; logits scaled or capped after it (Gemma-2's soft
    cap) would make its log-probs the wrong ones, so load_model compares the two and refuses."""
    from transformers import Qwen2ForCausalLM
    real = Qwen2ForCausalLM.forward

    def capped(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.logits = 30.0 * torch.tanh(out.logits / 30.0)
        return out
    progrs.load_model(str(TINY_MODEL), torch.device("cpu"))             # as it is: accepted
    monkeypatch.setattr(Qwen2ForCausalLM, "forward", capped)
    with pytest.raises(progrs.ProgrsError, match="its logits are not a linear head on the last"):
        progrs.load_model(str(TINY_MODEL), torch.device("cpu"))

# --------------------------------------------------------------------------------------------------
# Learned PRMs: quantile heads, two-class heads and causal LMs at a step tag, behind the toy PRM's
# interface, each step read at its last token (random heads on the tiny body; the built one below)

PRM = TINY_TASK / "prm"           # tiny_task/build_prm.py: a quantile head that learned style
QUESTION, STEPS = "What is 47 + 28 - 19?", ["47 + 28 = 75", "so subtract 19", "75 - 19 = 56"]

def save_token_classifier(path, labels, seed=0):
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer
    cfg = AutoConfig.from_pretrained(TINY_MODEL, num_labels=len(labels),
                                     id2label=dict(enumerate(labels)),
                                     label2id={x: i for i, x in enumerate(labels)})
    torch.manual_seed(seed)
    AutoModelForTokenClassification.from_config(cfg).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_MODEL).save_pretrained(path)
    return path

def save_step_tag_prm(path, tag="<step>", config_tag=False, seed=0, tokens=("+", "-")):
    """A tiny random causal LM whose tokenizer holds the tag (added) and the + / - tokens; with
    config_tag, its config names the tag and the tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tok.add_tokens([tag])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    if config_tag:
        model.config.progrs_step_tag = tag
        model.config.progrs_step_tokens = list(tokens)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

@pytest.fixture(scope="module")
def quantile_head(tmp_path_factory):
    """The folder of a token classifier with quantile labels q0.1, q0.5, q0.9 (a random head)."""
    return save_token_classifier(tmp_path_factory.mktemp("qm"), ["q0.1", "q0.5", "q0.9"], seed=3)

def cpu_prm(path, **kw):
    return progrs.ModelPRM(str(path), torch.device("cpu"), no_amp, **kw)

def score_one(prm, question, steps):
    """A learned PRM's (S, Q) quantiles for one solution."""
    return prm.score_batch([question], [steps])[0]

def test_prm_inputs_end_each_step_at_its_last_token(tiny):
    _, tok = tiny
    prompt = progrs.build_prompt(QUESTION)
    ids, ends = progrs.prm_inputs(tok, QUESTION, STEPS)
    assert ends[-1] == len(ids) - 1
    for k, e in enumerate(ends):                                      # up to and including "step\n"
        assert tok.decode(ids[:e + 1]) == prompt + "".join(s + "\n" for s in STEPS[:k + 1])
    ids, ends = progrs.prm_inputs(tok, QUESTION, STEPS, tag="#")
    for k, e in enumerate(ends):                                      # at the tag, before "\n"
        before = "".join(f"{s} #\n" for s in STEPS[:k])
        assert tok.decode(ids[:e + 1]) == prompt + before + f"{STEPS[k]} #"
    assert tok.decode(ids) == prompt + "".join(f"{s} #\n" for s in STEPS)

def test_learned_prms_read_the_logits_at_each_steps_last_token(quantile_head):
    """A quantile head against a forward pass done by hand; steps past the PRM's context get NaN (no
    opinion). The causal LM read at a step tag: test_step_tag_prm_reads_the_plus_minus_ratio_*."""
    prm = cpu_prm(quantile_head)
    ids, ends = progrs.prm_inputs(prm.tokenizer, QUESTION, STEPS)
    with torch.no_grad():
        z = prm.model(input_ids=torch.tensor([ids])).logits[0]
    got = score_one(prm, QUESTION, STEPS)
    assert torch.allclose(got, progrs.quantiles_from_logits(z[ends]), atol=1e-5)
    one_early = progrs.quantiles_from_logits(z[[e - 1 for e in ends]])
    assert not torch.allclose(got, one_early, atol=1e-3)
    prm.max_len = ends[1] + 1                                         # a context ending at step 2
    cut = score_one(prm, QUESTION, STEPS)
    assert torch.allclose(cut[:2], got[:2], atol=1e-5) and torch.isnan(cut[2]).all()  # no opinion

def test_quantile_prm_never_crosses_and_batches_like_one_at_a_time(quantile_head):
    prm = cpu_prm(quantile_head)
    assert prm.kind == "quantile" and prm.taus == (0.1, 0.5, 0.9)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(10000, 3, generator=g) * 20
    q = progrs.quantiles_from_logits(z)
    assert (q[:, 1:] >= q[:, :-1]).all() and ((q >= 0) & (q <= 1)).all()
    questions = ["What is 3 + 4?", QUESTION, "What is 1 + 1 + 1?", QUESTION, QUESTION]
    steps = [["3 + 4 = 7"], STEPS, [], STEPS[:1], STEPS]                # repeats are scored once
    batched = prm.score_batch(questions, steps)
    for qs, st, b in zip(questions, steps, batched):
        assert b.shape == (len(st), 3) and torch.allclose(b, score_one(prm, qs, st), atol=1e-5)
        assert (b[:, 1:] >= b[:, :-1]).all()

def test_two_class_prm_reads_the_probability_of_a_good_step(tmp_path):
    prm = cpu_prm(save_token_classifier(tmp_path / "pm", ["bad", "good"]))
    assert prm.kind == "two-class" and prm.taus == (0.5,) and prm.good == 1
    q = score_one(prm, QUESTION, STEPS)
    assert q.shape == (3, 1) and ((q > 0) & (q < 1)).all()
    ids, ends = progrs.prm_inputs(prm.tokenizer, QUESTION, STEPS)
    with torch.no_grad():
        z = prm.model(input_ids=torch.tensor([ids])).logits[0, ends]  # at each step's last token
    assert torch.allclose(q[:, 0], z.softmax(-1)[:, 1], atol=1e-6)

@pytest.mark.parametrize("labels,good", [
    (["bad", "good"], 1), (["good", "bad"], 0), (["correct", "incorrect"], 0),
    (["good", "not_good"], 0), (["+", "-"], 0), (["negative", "positive"], 1),
    (["LABEL_0", "LABEL_1"], 1)])
def test_two_class_prm_picks_the_good_label_by_whole_name(tmp_path, labels, good):
    assert cpu_prm(save_token_classifier(tmp_path / "pm", labels)).good == good

def test_step_tag_prm_reads_the_plus_minus_ratio_at_each_tag(tmp_path):
    prm = cpu_prm(save_step_tag_prm(tmp_path / "ms"), tag="<step>", tokens="+,-")
    steps = ["47 + 28 = 75", "75 - 19 = 56", "so the answer follows"]
    got = score_one(prm, QUESTION, steps)                                           # (S, 1)
    tok, model = prm.tokenizer, prm.model
    ids, ends = progrs.prm_inputs(tok, QUESTION, steps, "<step>")
    tag_id = tok.convert_tokens_to_ids("<step>")
    assert [ids[e] for e in ends] == [tag_id] * len(steps)                         # read at the tag
    plus, minus = (tok.encode(t, add_special_tokens=False)[0] for t in ("+", "-"))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, ends]              # (S, V)
    p_plus, p_minus = logits[:, plus].exp(), logits[:, minus].exp()
    want = p_plus / (p_plus + p_minus)                                             # by hand
    assert prm.kind == "step-tag" and prm.taus == (0.5,) and got.shape == (3, 1)
    assert torch.allclose(got[:, 0], want, atol=1e-5)
    assert not torch.allclose(want, want[:1].expand(3), atol=1e-3)                 # steps differ
    # the tag and tokens can come from the PRM's config instead of the flags
    cfg = cpu_prm(save_step_tag_prm(tmp_path / "cfg", config_tag=True))
    assert cfg.tag == "<step>" and torch.allclose(score_one(cfg, QUESTION, steps), got, atol=1e-6)

def test_quantile_labels_with_two_decimals_and_the_step_tag_flag_over_the_config(tmp_path):
    prm = cpu_prm(save_token_classifier(tmp_path / "q", ["q0.25", "q0.5", "q0.75"]))
    assert prm.kind == "quantile" and prm.taus == (0.25, 0.5, 0.75)
    path = save_step_tag_prm(tmp_path / "tag", tag="<alt>")
    config = json.loads((path / "config.json").read_text())
    config["progrs_step_tag"] = "<step>"                                   # not one token
    (path / "config.json").write_text(json.dumps(config))
    assert cpu_prm(path, tag="<alt>").tag == "<alt>"
    with pytest.raises(progrs.ProgrsError, match="<step>"):                # without the flag
        cpu_prm(path)

def test_step_tag_prm_with_a_wrong_tag_or_token_is_one_clear_error(tmp_path):
    path = str(save_step_tag_prm(tmp_path / "ms"))
    for tag, tokens in (("ки", "+,-"), ("<step>", "+,plus sign"), ("<step>", "+")):
        with pytest.raises(progrs.ProgrsError, match=r"--prm .*: step tag and tokens") as e:
            cpu_prm(path, tag=tag, tokens=tokens)
        assert "\n" not in str(e.value) and path in str(e.value)

def test_a_head_that_does_not_match_its_labels_is_one_line(tmp_path):
    path = save_token_classifier(tmp_path / "qm", ["q0.1", "q0.5", "q0.9"])
    cfg = json.loads((path / "config.json").read_text())
    cfg["id2label"] = {"0": "q0.1", "1": "q0.9"}
    cfg["label2id"] = {"q0.1": 0, "q0.9": 1}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(progrs.ProgrsError, match="--prm") as e:
        cpu_prm(path)
    assert "\n" not in str(e.value)
    bad = save_token_classifier(tmp_path / "five", ["a", "b", "c", "d", "e"])
    with pytest.raises(progrs.ProgrsError, match="quantile head .* or a two-class head"):
        cpu_prm(bad)

def test_the_built_prm_loads_and_tells_careful_steps_from_hasty_ones():
    """tiny_task/prm (tiny_task/build_prm.py): a quantile head that learned the style of a
    solution."""
    prm = cpu_prm(PRM)
    assert prm.kind == "quantile" and prm.taus == (0.1, 0.5, 0.9)
    careful = score_one(prm, QUESTION, ["47 + 28 = 75", "75 - 19 = 56"])
    hasty = score_one(prm, QUESTION, ["47 + 28 - 19 = 50"])
    assert (careful[:, 1:] > careful[:, :-1]).all() and careful[-1, 1] > 0.5 > hasty[0, 1]

def test_build_prm_reads_the_flag_else_the_configs_quantile_else_the_lowest():
    def built(*flags):
        prm = progrs.build_prm(parse(*flags), torch.device("cpu"), no_amp)
        return prm.taus[prm.q_index], prm.q_index, prm.default_tau
    assert built() == (0.1, 0, None)                                  # the toy PRM: its lowest
    assert built("--prm-quantile", "0.9") == (0.9, 2, None)
    learned = str(PRM)                                                # its config names 0.5
    assert built("--prm", learned) == (0.5, 1, 0.5)
    assert built("--prm", learned, "--prm-quantile", "0.9") == (0.9, 2, 0.5)  # the flag still wins

def test_learned_prm_bonus_is_on_the_toy_prms_scale_by_default(tiny):
    """--prm tiny_task/prm reads the quantile its config names (0.5); its mean |c| over the same
    rollouts is within a factor of 3 of the toy PRM's (at the lowest quantile it is a tenth)."""
    model, tok = tiny
    learned = progrs.build_prm(parse("--prm", str(PRM)), torch.device("cpu"), no_amp)
    toy = progrs.build_prm(parse(), torch.device("cpu"), no_amp)
    problems = load_problems(TINY_TRAIN)[:16]
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    torch.manual_seed(0)
    texts = progrs.generate(model, tok, prompts, 8, 64, 1.0, no_amp)["texts"]
    per = [p for p in problems for _ in range(8)]

    def mean_abs_bonus(prm, q_index):
        s = progrs.score_completions(per, texts, prm, q_index, 1.0)
        correct = torch.tensor(s["correct"]).view(16, 8)
        b = torch.tensor(s["b"]).view(16, 8)
        return float(compute_advantages(correct, b, "progrs", 1.0)[2].abs().mean())

    ratio = mean_abs_bonus(learned, learned.q_index) / mean_abs_bonus(toy, toy.q_index)
    assert 1 / 3 <= ratio <= 3, ratio
    assert mean_abs_bonus(learned, 0) / mean_abs_bonus(toy, 0) < 1 / 3   # the trap it replaces

def test_a_prm_checkpoint_without_its_head_is_refused_in_one_line(tmp_path):
    """The quantile PRM's folder without its score head's weights: from_pretrained would make up a
    random head; ModelPRM refuses it, naming the missing weights."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(TINY_TASK / "prm", tmp_path / "prm")
    weights = load_file(tmp_path / "prm" / "model.safetensors")
    body = {k: v for k, v in weights.items() if not k.startswith("score.")}
    assert len(body) == len(weights) - 2
    save_file(body, tmp_path / "prm" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(progrs.ProgrsError) as e:
        progrs.ModelPRM(str(tmp_path / "prm"), torch.device("cpu"), no_amp)
    assert "has no classification head (score.bias, score.weight missing)" in str(e.value)
    assert "\n" not in str(e.value)

# --------------------------------------------------------------------------------------------------
# Loss and update: log-probs at the sampling temperature, the clipped loss over the batch's tokens,
# optional k3 KL, clipping, PPO epochs

def make_batch(model, tok, seed=0, n=8):
    torch.manual_seed(seed)
    questions = ("What is 12 + 30 - 5?", "What is 60 - 18 + 7 + 2?")
    prompts = [progrs.build_prompt(q) for q in questions]
    return progrs.generate(model, tok, prompts, n // 2, 40, 1.0, no_amp)

@pytest.fixture(scope="module")
def batch8(tiny):
    """8 rollouts of two prompts sampled from the tiny model (seed 0); tests read it, never change
    it."""
    return make_batch(*tiny)

def params_of(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])

def grads_of(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

def updated(model, batch, adv, *flags, lr=0.0, ref_model=None):
    """(a copy of the model after update_policy with these flags and plain SGD at lr, the stats);
    lr 0 keeps the weights and leaves the gradients to read."""
    m = copy_of(model)
    sgd = torch.optim.SGD(m.parameters(), lr=lr)
    stats = progrs.update_policy(m, sgd, batch, adv, parse(*flags), no_amp, ref_model=ref_model)
    return m, stats

def grads_after_update(model, batch, adv, micro_batch, *flags):
    """The gradient of one update, unclipped."""
    m, _ = updated(model, batch, adv, "--micro-batch", str(micro_batch), "--max-grad-norm", "1e9",
                   *flags)
    return grads_of(m)

def token_logprobs(model, batch, temperature=1.0):
    return progrs.token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                 batch["prompt_len"], temperature, no_amp)

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

def test_bf16_autocast_gives_fp32_logprobs_close_to_fp32(tiny, batch8):
    model, _ = tiny
    args = (batch8["input_ids"], batch8["attention_mask"], batch8["prompt_len"], 1.0)
    with torch.no_grad():
        exact = progrs.token_logprobs(model, *args, no_amp)
        bf16 = progrs.token_logprobs(model, *args,
                                     lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert bf16.dtype == torch.float32
    err = (bf16 - exact)[batch8["completion_mask"]].abs()
    assert 0 < err.max() < 0.1                                        # bf16 body, fp32 head

def test_a_biased_head_is_read_with_its_bias(tiny):
    """token_logprobs reads the head as weight and bias: a model whose LM head has a bias gets
    it."""
    bias = torch.randn(len(tiny[1]), generator=torch.Generator().manual_seed(0)) * 3
    model, tok = with_biased_head(tiny[0], bias), tiny[1]
    enc = tok([progrs.build_prompt("What is 3 + 4?")], return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([[17, 18, 19, 20]])], 1)
    Tp = enc["input_ids"].shape[1]
    with torch.no_grad():
        logp = (model(input_ids=ids).logits.float() / 0.7).log_softmax(-1)
        ref = logp[0, Tp - 1:-1].gather(-1, ids[0, Tp:, None])
        ours = progrs.token_logprobs(model, ids, torch.ones_like(ids), Tp, 0.7, no_amp)
    assert torch.allclose(ours.flatten(), ref.flatten(), atol=1e-4)

def test_policy_loss_adds_no_kl_unless_given_a_coefficient():
    logp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.1, -1.9]])
    ref = torch.tensor([[-3.0, -0.5]])
    adv, mask = torch.tensor([0.7]), torch.ones(1, 2)
    plain, _ = progrs.policy_loss(logp, old, adv, mask, 2)
    with_ref, kl = progrs.policy_loss(logp, old, adv, mask, 2, ref_logp=ref)
    assert with_ref == plain and kl > 0                               # logged, not trained
    trained, _ = progrs.policy_loss(logp, old, adv, mask, 2, ref_logp=ref, kl_coef=0.5)
    assert trained == plain + 0.5 * kl

def test_ppo_clip_takes_the_pessimistic_side():
    """L = -min(rho A, clip(rho, 0.8, 1.2) A): a ratio past the clip in the advantage's direction
    gets no credit beyond it and no gradient; the other side is never clipped."""
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    per_token = []
    for j in range(4):
        mask = torch.zeros(1, 4)
        mask[0, j] = 1
        loss, _ = progrs.policy_loss(logp, old, adv[j:j + 1].expand(1), mask, 1.0)
        per_token.append(loss.item())
    assert per_token == pytest.approx([-1.2, -0.5, 1.5, 0.8])
    first = torch.tensor([[1.0, 0, 0, 0]])
    loss, _ = progrs.policy_loss(logp, old, torch.tensor([1.0]), first, 1.0)
    loss.backward()
    assert logp.grad[0, 0] == 0                                       # clipped: no gradient

def test_k3_kl_estimates_kl_of_the_policy_to_the_reference():
    """E_{y ~ pi}[exp(ref - logp) - (ref - logp) - 1] = KL(pi || ref) exactly, for any two
    distributions; the estimator with the sign flipped does not."""
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(1, 12, generator=g).log_softmax(-1)
    ref = torch.randn(1, 12, generator=g).log_softmax(-1)
    pi = logp.exp()
    _, kl = progrs.policy_loss(logp, logp, torch.zeros(1), pi, 1.0, ref_logp=ref, kl_coef=1.0)
    assert kl.item() == pytest.approx(float((pi * (logp - ref)).sum()), rel=1e-5)

def test_same_gradient_for_any_micro_batch_split(tiny, batch8):
    adv = torch.linspace(-1.5, 1.5, 8)
    g1 = grads_after_update(tiny[0], batch8, adv, 8)
    g4 = grads_after_update(tiny[0], batch8, adv, 2)
    assert g1.abs().sum() > 0
    assert torch.allclose(g1, g4, atol=1e-6, rtol=1e-4)

@pytest.mark.parametrize("temperature,micro_batch", [(1.0, 3), (0.5, 8)])
def test_the_update_reads_log_probs_at_the_sampling_temperature_as_the_supervised_gradient(
        tiny, batch8, temperature, micro_batch):
    """With A = 1 for every rollout the update is supervised training on the batch's own tokens:
    the gradient of the mean token NLL of softmax(logits / T) at the run's --temperature, over the
    whole batch (divided by tokens, not sequences)."""
    mask = batch8["completion_mask"]
    assert len(set(mask.sum(1).tolist())) > 1                         # rows of different lengths
    got = grads_after_update(tiny[0], batch8, torch.ones(8), micro_batch, "--temperature",
                             str(temperature))
    m = copy_of(tiny[0])
    lp = token_logprobs(m, batch8, temperature)
    (-(lp * mask).sum() / mask.sum()).backward()
    assert torch.allclose(got, grads_of(m), atol=1e-6, rtol=1e-4)

def test_one_update_raises_probability_of_positive_advantage_completion(tiny):
    model, tok = tiny
    batch = make_batch(model, tok, seed=3)
    adv = torch.full((8,), -0.5)
    adv[0] = 3.5
    mask = batch["completion_mask"]

    def seq_logprob(m):
        with torch.no_grad():
            return (token_logprobs(m, batch) * mask).sum(1)
    before = seq_logprob(model)
    # a small plain gradient step: the direction of the update is what is under test
    m, _ = updated(model, batch, adv, "--micro-batch", "8", lr=1e-2)
    after = seq_logprob(m)
    assert after[0] > before[0]
    assert (after[1:] - before[1:]).mean() < 0                        # negative advantages: down

def test_a_batch_of_one_completion_token_is_averaged_over_that_one_token(tiny):
    batch = make_batch(*tiny, n=2)
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    batch["completion_mask"][0, 0] = True
    _, stats = updated(tiny[0], batch, torch.tensor([0.5, -2.0]), "--micro-batch", "8")
    assert stats["loss"] == pytest.approx(-0.5)                      # -A * ratio (1) over 1 token

def test_gradient_clipping_logs_the_norm_before_and_steps_by_the_clipped_gradient(tiny, batch8):
    """--max-grad-norm: grad_norm is logged before clipping; the step uses the clipped gradient."""
    model = tiny[0]
    adv = torch.linspace(-1.5, 1.5, 8)
    full = grads_after_update(model, batch8, adv, 8)                  # max norm 1e9: not clipped
    norm = float(full.norm())
    m, stats = updated(model, batch8, adv, "--micro-batch", "8", "--max-grad-norm", str(norm / 4),
                       lr=1.0)
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-3)
    step = params_of(model) - params_of(m)                            # SGD, lr 1: the gradient used
    assert step.shape == full.shape
    assert (step - full / 4).norm() < 1e-3 * (full / 4).norm()

def test_each_ppo_epoch_starts_from_zero_gradients_against_the_first_epochs_log_probs(tiny,
                                                                                     batch8):
    """--ppo-epochs 2: the second epoch's gradient is the clipped loss's at the moved weights,
    against the log-probs of the first epoch, and nothing from the first epoch's gradient is
    carried over. The logged loss is the first epoch's: -(1/N) sum_i A_i len_i."""
    model = tiny[0]
    adv, lr, mask = torch.linspace(-1.5, 1.5, 8), 3.0, batch8["completion_mask"].float()
    m, stats = updated(model, batch8, adv, "--micro-batch", "3", "--ppo-epochs", "2",
                       "--max-grad-norm", "1e9", lr=lr)
    got = torch.cat([p.grad.flatten() for p in m.parameters()])
    logged = float(-(adv[:, None] * mask).sum() / mask.sum())
    assert stats["loss"] == pytest.approx(logged, rel=1e-5)
    # by hand: one SGD step along the first gradient, then the clipped loss against the old ones
    with torch.no_grad():
        old = token_logprobs(model, batch8)
    g0 = grads_after_update(model, batch8, adv, 8)
    h = copy_of(model)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(params_of(h) - lr * g0, h.parameters())
    logp = token_logprobs(h, batch8)
    progrs.policy_loss(logp, old, adv, mask, mask.sum())[0].backward()
    want = torch.cat([p.grad.flatten() for p in h.parameters()])
    ratio = torch.exp(logp.detach() - old)[mask.bool()]
    assert (ratio - 1).abs().max() > 0.05                              # the weights did move
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-3)

def test_kl_to_the_reference_model_is_logged_and_trained(tiny, batch8):
    """--kl-coef 0.5 with every A = 0: the loss is 0.5 * KL, with KL the k3 estimate against the
    reference model's log-probs, over the batch's tokens; its gradient pulls the policy back to
    the reference."""
    model = tiny[0]
    mask = batch8["completion_mask"].float()
    ref = copy_of(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.mul_(1.05)
        d = token_logprobs(ref, batch8) - token_logprobs(model, batch8)
    want = float(((d.exp() - d - 1) * mask).sum() / mask.sum())
    _, stats = updated(model, batch8, torch.zeros(8), "--micro-batch", "3", "--kl-coef", "0.5",
                       "--max-grad-norm", "1e9", ref_model=ref)
    assert want > 1e-3 and stats["kl"] == pytest.approx(want, rel=1e-4)
    assert stats["loss"] == pytest.approx(0.5 * want, rel=1e-4)
    assert stats["grad_norm"] > 0

def test_entropy_is_the_mean_token_entropy_of_the_sampled_completions_at_the_temperature(tiny):
    model, tok = tiny
    problems = load_problems(TINY_TEST)[:3]
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    torch.manual_seed(0)
    batch = progrs.generate(model, tok, prompts, 2, 12, 0.7, no_amp)
    batch["completion_mask"][0, 5:] = False                              # one completion ends early
    ids, att, Tp = batch["input_ids"], batch["attention_mask"], batch["prompt_len"]
    with torch.no_grad():
        position_ids = (att.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids).logits
        logits = logits[:, Tp - 1:-1].float()

    def by_hand(temperature):
        logp = (logits / temperature).log_softmax(-1)                     # (B, T, V)
        per_token = -(logp.exp() * logp).sum(-1)                          # (B, T)
        mask = batch["completion_mask"].float()
        return float((per_token * mask).sum() / mask.sum())
    _, stats = updated(model, batch, torch.zeros(6), "--temperature", "0.7", "--micro-batch", "4")
    assert stats["entropy"] == pytest.approx(by_hand(0.7), rel=1e-4)
    assert abs(by_hand(1.0) - by_hand(0.7)) > 1e-2                       # the temperature matters

def test_a_non_finite_gradient_stops_the_run_before_the_weights_change(tiny):
    model, tok = tiny
    m = copy.deepcopy(model)
    torch.manual_seed(0)
    batch = progrs.generate(m, tok, [progrs.build_prompt("What is 2 + 3?")], 2, 8, 1.0, no_amp)
    m.get_input_embeddings().weight.register_hook(lambda g: g * math.nan)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    with pytest.raises(progrs.ProgrsError, match="non-finite gradient norm"):
        progrs.update_policy(m, opt, batch, torch.tensor([1.0, -1.0]), parse("--micro-batch", "2"),
                             no_amp)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())

# --------------------------------------------------------------------------------------------------
# Training loop: verify and score, rollout_step, evaluate, the step's metrics, the teaching view,
# train

def test_score_completions_trace_errors_steps_judged_and_lam_var(monkeypatch):
    """trace_error: a right answer through at least one false equation (never a wrong answer); a
    text whose scoring raises: wrong, no trace error, 0 steps, the lowest b (0), counted unscorable;
    judged: any step judged; b uses lam_var."""
    texts = ["2 + 2 = 4\nAnswer: 4", "2 + 2 = 5\nAnswer: 4", "2 + 2 = 5\nAnswer: 5",
             "boom\nAnswer: 4", "we add\nAnswer: 4", "2 + 2 = 4\n2 + 3 = 9\nAnswer: 4"]
    probs = [{"question": "What is 2 + 2?", "gold": "4"}] * len(texts)
    real = progrs.split_steps

    def fragile(text):                                   # verification that blows up on "boom"
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
    assert s["b"][3] == 0.0 < s["b"][0]
    q = ToyPRM().score("", ["2 + 2 = 4", "2 + 3 = 9"])[:, 1]
    assert s["step_scores"][0] == [pytest.approx(float(q[0]))] and s["step_scores"][3] == []
    assert s["step_scores"][4] == [pytest.approx(math.nan, nan_ok=True)]
    assert s["b"][5] == pytest.approx(coherence_score(q, lam_var=0.0))
    assert s["b"][5] == pytest.approx(float(q.mean()))
    s2 = progrs.score_completions(probs[5:], texts[5:], ToyPRM(), 1, 2.0)
    assert s2["b"][0] == pytest.approx(coherence_score(q, lam_var=2.0)) and s2["b"][0] < s["b"][5]

def fake_rollouts(monkeypatch, group_size, text):
    """progrs.generate replaced: rollout j of prompt i is text(i, j); returns args for
    rollout_step."""
    def fake_generate(model, tokenizer, prompts, n, *args, **kwargs):
        texts = [text(i, j) for i in range(len(prompts)) for j in range(n)]
        return dict(texts=texts, completion_mask=torch.ones(len(texts), 4, dtype=torch.bool),
                    truncated=torch.zeros(len(texts), dtype=torch.bool))
    monkeypatch.setattr(progrs, "generate", fake_generate)
    flags = ["--group-size", str(group_size), "--max-new-tokens", "8"]
    return parse(*flags)

def test_rewards_are_paired_with_their_own_problems(monkeypatch):
    """rollout_step judges row r against problem r // G (rows are prompt-major)."""
    problems = [{"question": f"What is {i} + 0?", "gold": str(i)} for i in range(5)]
    G = 3
    args = fake_rollouts(monkeypatch, G, lambda i, j: f"{i} + 0 = {i}\nAnswer: {i}")
    batch = progrs.rollout_step(None, None, problems, args, ToyPRM(), no_amp)
    assert batch["correct"].shape == (5, G) and batch["correct"].all()
    problems[2]["gold"] = "99"                                    # one problem's rollouts all wrong
    batch = progrs.rollout_step(None, None, problems, args, ToyPRM(), no_amp)
    assert batch["correct"].sum(1).tolist() == [G, G, 0, G, G]

def test_rollout_step_scores_with_the_named_column_and_the_runs_mode_and_lam(monkeypatch):
    """b is the coherence of the q_index column; A follows --mode and --lam."""
    problems = [{"question": f"What is {i} + 1?", "gold": str(i + 1)} for i in range(2)]

    def texts(i, j):
        return f"{i} + 1 = {i + 1}\n{i} + 2 = {i + 2 + j % 2}\nAnswer: {i + j}"
    args = fake_rollouts(monkeypatch, 4, texts)
    for mode, lam, q_index in (("progrs", 0.7, 2), ("absolute", 1.3, 1), ("outcome", 1.0, 0)):
        args.mode, args.lam = mode, lam
        prm = ToyPRM()
        prm.q_index = q_index
        batch = progrs.rollout_step(None, None, problems, args, prm, no_amp)
        b = torch.tensor([[coherence_score(ToyPRM().score("", split_steps(texts(i, j)))[:, q_index])
                           for j in range(4)] for i in range(2)])
        assert torch.allclose(batch["b_grid"], b)
        assert torch.allclose(batch["adv"], compute_advantages(batch["correct"], b, mode, lam)[0])
    assert batch["correct"].tolist() == [[False, True, False, False]] * 2

def test_rollout_step_hands_generate_the_runs_prompts_and_sampling_settings(monkeypatch):
    """generate gets each problem's prompt once, G, --max-new-tokens, --temperature, the run's
    autocast and --chat; t_generate and t_score are the two phases' wall times."""
    seen = []

    def fake_generate(model, tokenizer, prompts, n, max_new_tokens, temperature, amp, chat):
        seen.append((prompts, n, max_new_tokens, temperature, amp, chat))
        time.sleep(0.05)
        return dict(texts=["Answer: 1"] * (len(prompts) * n))
    monkeypatch.setattr(progrs, "generate", fake_generate)
    args = parse("--group-size", "3", "--max-new-tokens", "17", "--temperature", "0.6")
    problems = [{"question": f"What is {i} + 1?", "gold": "1"} for i in range(2)]
    start = time.perf_counter()
    batch = progrs.rollout_step(None, None, problems, args, ToyPRM(), no_amp)
    took = time.perf_counter() - start
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    assert seen == [(prompts, 3, 17, 0.6, no_amp, False)]
    assert 0.05 <= batch["t_generate"] and 0 <= batch["t_score"]
    assert batch["t_generate"] + batch["t_score"] <= took

def test_rule_and_learned_prm_are_interchangeable_in_rollout_step(quantile_head, monkeypatch):
    problems = [{"question": f"What is {i} + 1?", "gold": str(i + 1)} for i in range(3)]
    args = fake_rollouts(monkeypatch, 4, lambda i, j: f"{i} + 1 = {i + j}\nnow\nAnswer: {i + j}")
    learned = cpu_prm(quantile_head)
    prms = (ToyPRM(), learned)
    out = [progrs.rollout_step(None, None, problems, args, prm, no_amp) for prm in prms]
    assert out[0].keys() == out[1].keys()
    for k in ("correct", "b_grid", "adv", "a_out", "c"):
        assert out[0][k].shape == out[1][k].shape == (3, 4)
    assert torch.equal(out[0]["correct"], out[1]["correct"])   # the outcome is no PRM's business
    m = [progrs.step_metrics(o, args) for o in out]
    assert m[0].keys() == m[1].keys()

def recorded_generate(monkeypatch) -> list:
    """progrs.generate, each call's (temperature, texts) recorded in the list returned."""
    calls = []
    real = progrs.generate

    def spy(model, tokenizer, prompts, n, max_new_tokens, temperature, *rest, **kw):
        out = real(model, tokenizer, prompts, n, max_new_tokens, temperature, *rest, **kw)
        calls.append((temperature, out["texts"]))
        return out
    monkeypatch.setattr(progrs, "generate", spy)
    return calls

def test_sampled_pass_at_1_is_the_mean_over_k_samples_of_each_problem(monkeypatch):
    """K samples per problem at the training temperature, each judged against its own problem, in
    chunks of at most --eval-batch rows; greedy pass@1 beside it."""
    calls = []

    def fake_generate(model, tokenizer, prompts, n, max_new_tokens, temperature, *rest):
        calls.append((len(prompts), n, temperature))
        ids = [int(re.search(r"What is (\d+) \+ 0", p).group(1)) for p in prompts]
        if temperature == 0:                                          # greedy: even problems right
            return dict(texts=[f"Answer: {i if i % 2 == 0 else 999}" for i in ids])
        return dict(texts=[f"Answer: {i if j < i % 4 else 999}" for i in ids for j in range(n)])
    monkeypatch.setattr(progrs, "generate", fake_generate)
    args = parse("--eval-samples", "4", "--temperature", "0.7", "--eval-batch", "8",
                 "--max-new-tokens", "8")
    problems = [{"question": f"What is {i} + 0?", "gold": str(i)} for i in range(6)]
    model = types.SimpleNamespace(device=torch.device("cpu"))
    ev = progrs.evaluate(model, None, problems, args, ToyPRM(), no_amp)
    assert ev["eval_accuracy"] == 3 / 6
    assert ev["eval_sampled_accuracy"] == (0 + 1 + 2 + 3 + 0 + 1) / 24
    assert calls == [(6, 1, 0.0)] + [(2, 4, 0.7)] * 3
    # pass@k from the same samples: right counts c = 0, 1, 2, 3, 0, 1 of n = 4, k = 2 and 4 only
    assert {k for k in ev if "pass@" in k} == {"eval_sampled_pass@2", "eval_sampled_pass@4"}
    assert ev["eval_sampled_pass@2"] == pytest.approx((0 + 1 / 2 + 5 / 6 + 1 + 0 + 1 / 2) / 6)
    assert ev["eval_sampled_pass@4"] == 4 / 6                     # any right sample among the 4
    args.eval_samples = 6                                         # k: powers of 2 up to K
    assert {k for k in progrs.evaluate(model, None, problems, args, ToyPRM(), no_amp)
            if "pass@" in k} == {"eval_sampled_pass@2", "eval_sampled_pass@4"}

def test_pass_at_k_is_the_mean_over_every_k_subset_of_the_samples():
    """Chen et al.'s estimator equals the brute-force mean over all C(n, k) subsets of n samples,
    c right, of 'some sample right'; exactly 0 with no right sample, exactly 1 when every k-subset
    must hold one (c = n, or n - c < k)."""
    for n in range(1, 9):
        for c in range(n + 1):
            right = [j < c for j in range(n)]
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(right, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert progrs.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
                if c == 0:
                    assert progrs.pass_at_k(n, c, k) == 0.0
                if c == n or n - c < k:
                    assert progrs.pass_at_k(n, c, k) == 1.0
    assert progrs.pass_at_k(32, 1, 1) == 1 / 32 and progrs.pass_at_k(32, 1, 32) == 1.0
    assert progrs.pass_at_k(32, 16, 17) == 1.0 and 0.99 < progrs.pass_at_k(32, 16, 16) < 1.0

def test_sampled_evaluation_is_seeded_and_leaves_the_training_random_stream_alone(tiny,
                                                                                  monkeypatch):
    model, tok = tiny
    args = parse("--eval-samples", "2", "--eval-batch", "16", "--max-new-tokens", "24")
    problems = load_problems(TINY_TEST)[:8]
    calls = recorded_generate(monkeypatch)
    sampled = []
    for global_seed in (123, 456):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        progrs.evaluate(model, tok, problems, args, ToyPRM(), no_amp)
        assert torch.equal(torch.get_rng_state(), state)          # the training stream is untouched
        sampled.append([x for temperature, texts in calls if temperature > 0 for x in texts])
        calls.clear()
    assert sampled[0] == sampled[1]                                   # seeded by --seed alone
    assert len(set(sampled[0])) > 8                                   # and sampled, not greedy

def test_evaluation_reports_the_fluent_failure_rate_against_the_training_pool(monkeypatch):
    """evaluate's gauge uses the right b's seen in training: sound-looking wrong answers count."""
    texts = ["2 + 2 = 4\nAnswer: 4", "Add.\n2 + 2 = 4\nAnswer: 5", "2 + 2 = 5\nAnswer: 5",
             "Answer: 5"]
    monkeypatch.setattr(progrs, "generate",
                        lambda model, tok, prompts, n, *a, **k: dict(texts=texts))
    args = parse("--eval-batch", "8", "--max-new-tokens", "8")
    problems = [{"question": "What is 2 + 2?", "gold": "4"}] * 4
    ev = progrs.evaluate(None, None, problems, args, ToyPRM(), no_amp, right_pool=[0.9, 0.95])
    true, false = (coherence_score(ToyPRM().score("", [s])[:, 0])
                   for s in ("2 + 2 = 4", "2 + 2 = 5"))
    assert ev["eval_accuracy"] == 0.25
    assert ev["eval_process_score"] == pytest.approx((2 * true + false) / 4)
    assert ev["eval_fluent_failure_rate"] == 0.0                  # 0.63 is below the pool's median
    ev = progrs.evaluate(None, None, problems, args, ToyPRM(), no_amp, right_pool=[0.1, 0.2])
    assert ev["eval_fluent_failure_rate"] == 0.25                     # the fluent wrong one, alone

def metrics_batch(correct, b, mode="progrs", lam=1.0, judged=None, trace_error=None):
    """A batch dict as rollout_step returns it, for step_metrics: (P, G) outcomes and b's."""
    correct = torch.tensor(correct)
    b = torch.tensor(b, dtype=torch.float32)
    n = correct.numel()
    adv, a_out, c = compute_advantages(correct, b, mode, lam)
    return dict(correct=correct, b_grid=b, b=b.flatten().tolist(), c=c, adv=adv, a_out=a_out,
                judged=[True] * n if judged is None else judged,
                trace_error=[False] * n if trace_error is None else trace_error, n_steps=[2] * n,
                completion_mask=torch.ones(n, 5, dtype=torch.bool),
                truncated=torch.zeros(n, dtype=torch.bool),
                unscorable=[False] * n)

G4 = types.SimpleNamespace(group_size=4)
# one mixed group and one all-wrong group (G = 4); the last rollout has no judged step
GAUGE = ([[True, False, False, False], [False, False, False, False]],
         [[0.8, 0.6, 0.5, 0.1], [0.45, 0.1, 0.9, 0.0]])

def test_fluent_failure_gauge_counts_judged_wrong_rollouts_that_reach_the_median_right_b():
    """Pool = the run's right b's (0.4, 0.5) + this batch's (0.8): median 0.5. Wrong, judged and
    b >= 0.5: 0.6, 0.5 and 0.9, so 3 of 8. The share of the all-wrong group's positive advantage
    that goes to them: A = b - mean b = (0.0875, -0.2625, 0.5375, -0.3625), so 0.5375 / (0.0875 +
    0.5375) = 0.86. A wrong rollout with no judged step never counts, however high its b."""
    pool = [0.4, 0.5]
    batch = metrics_batch(*GAUGE, judged=[True] * 7 + [False])
    m = progrs.step_metrics(batch, G4, pool)
    assert m["fluent_failure_rate"] == pytest.approx(3 / 8)
    assert m["all_wrong_push_to_fluent"] == pytest.approx(0.86, abs=1e-6)
    assert batch["fluent"].tolist() == [[False, True, True, False], [False, False, True, False]]
    assert pool == pytest.approx([0.4, 0.5, 0.8])               # this step's right b joins the pool
    assert (m["groups_all_wrong"], m["groups_all_correct"], m["train_accuracy"]) == (1, 0, 1 / 8)
    assert m["process_score_correct"] == pytest.approx(0.8)
    assert m["process_score_incorrect"] == pytest.approx((0.6 + 0.5 + 0.1 + 0.45 + 0.1 + 0.9) / 7)
    # no right rollout yet, in the pool or the batch: no median, no gauge
    batch["correct"] = torch.zeros(2, 4, dtype=torch.bool)
    m = progrs.step_metrics(batch, G4, [])
    assert m["fluent_failure_rate"] is None and not batch["fluent"].any()
    batch = metrics_batch([[True, False, False, False]], [[0.5, 0.9, 0.9, 0.0]],
                          judged=[True, False, True, True])
    m = progrs.step_metrics(batch, G4, [])
    assert m["fluent_failure_rate"] == 0.25
    assert batch["fluent"].tolist() == [[False, False, True, False]]

def test_bonus_incorrect_abs_is_the_mean_absolute_bonus_of_wrong_rollouts():
    """Its signed mean is 0 by construction (centred); the log keeps mean |c| of the wrong
    rollouts: (0.2 + 0.1 + 0.3 + 0.0875 + 0.2625 + 0.5375 + 0.3625) / 7. bonus_correct is the
    mean c of right ones."""
    batch = metrics_batch(*GAUGE)
    m = progrs.step_metrics(batch, G4, [])
    assert float(batch["c"][~batch["correct"]].mean()) == pytest.approx(0.0, abs=1e-6)
    assert m["bonus_incorrect_abs"] == pytest.approx(1.85 / 7, abs=1e-6)
    assert m["bonus_correct"] == pytest.approx(0.8)

def test_trace_error_rate_is_per_right_answer():
    """trace_error_rate = right answers reached through a false equation / right answers (1 of 2),
    not / all rollouts (1 of 8); with no right answer it is 0."""
    batch = metrics_batch([[True, True, False, False], [False] * 4], [[0.5] * 4] * 2,
                          trace_error=[True] + [False] * 7)
    m = progrs.step_metrics(batch, G4, [])
    assert m["trace_error_rate"] == 0.5 and m["train_accuracy"] == 0.25
    r = progrs.rollout_metrics(dict(correct=[False, False], b=[0.1, 0.3],
                                    trace_error=[False, False], n_steps=[1, 4]), None)
    assert r == dict(accuracy=0.0, process_score=pytest.approx(0.2), trace_error_rate=0.0,
                     steps_per_answer=2.5, fluent_failure_rate=None)
    r = progrs.rollout_metrics(dict(correct=[True, False, False, False], b=[0.1, 0.3, 0.2, 0.2],
                                    trace_error=[True, False, False, False], n_steps=[1, 4, 0, 0]),
                               torch.tensor([False, True, False, False]))
    assert r == dict(accuracy=0.25, process_score=pytest.approx(0.2), trace_error_rate=1.0,
                     steps_per_answer=1.25, fluent_failure_rate=0.25)

def test_step_metrics_counts_groups_tokens_truncation_and_push():
    """groups_all_correct / groups_all_wrong against --group-size, the mean completion length,
    truncated and unscorable counts, process scores by outcome, and all_wrong_push_to_fluent (None
    without a push)."""
    batch = metrics_batch([[True] * 4, [False] * 4, [True, False, True, False]],
                          [[0.9, 0.8, 0.7, 0.6], [0.2, 0.2, 0.2, 0.2], [0.5, 0.4, 0.3, 0.1]])
    lengths = [[1, 1, 1, 0, 0]] * 6 + [[1, 0, 0, 0, 0]] * 6
    batch["completion_mask"] = torch.tensor(lengths, dtype=torch.bool)
    batch["truncated"] = torch.tensor([True, False, True] + [False] * 9)
    batch["unscorable"] = [True] + [False] * 11
    pool = []
    m = progrs.step_metrics(batch, G4, pool)
    assert (m["groups_all_correct"], m["groups_all_wrong"]) == (1, 1)
    assert m["completion_tokens"] == 2.0 and m["truncated"] == 2 and m["unscorable"] == 1
    b_sum = sum([0.9, 0.8, 0.7, 0.6, 0.8, 0.5, 0.4, 0.3, 0.1])
    assert m["process_score"] == pytest.approx(b_sum / 12)
    assert m["process_score_correct"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6 + 0.5 + 0.3) / 6)
    assert m["process_score_incorrect"] == pytest.approx((0.8 + 0.4 + 0.1) / 6)
    assert m["all_wrong_push_to_fluent"] is None                    # the all-wrong group is uniform
    assert pool == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5, 0.3])
    assert progrs.step_metrics(batch, G4, None)["fluent_failure_rate"] == 0.0

def test_step_metrics_counts_dominance_violations_on_a_not_a_out():
    """The logged dominance_violations is taken on the advantages trained on (A), which lam can
    break, not on A_out, which never violates."""
    batch = metrics_batch([[True, False, False, False]], [[0.0, 1.0, 0.0, 0.0]], lam=10.0)
    assert dominance_violations(batch["a_out"], batch["correct"]) == 0
    m = progrs.step_metrics(batch, G4, [])
    assert m["dominance_violations"] == dominance_violations(batch["adv"], batch["correct"]) == 1

def test_step_metrics_logs_exactly_these_keys_and_the_float32_mean_b():
    """The metrics line's keys are fixed (a renamed or extra key changes what metrics.jsonl means);
    process_score is the mean of the float32 b's the advantages used."""
    batch = metrics_batch([[True, False, False]], [[0.1, 0.2, 0.7]])
    m = progrs.step_metrics(batch, types.SimpleNamespace(group_size=3), [])
    assert set(m) == {"train_accuracy", "process_score", "trace_error_rate", "steps_per_answer",
                      "fluent_failure_rate", "process_score_correct", "process_score_incorrect",
                      "bonus_correct", "bonus_incorrect_abs", "groups_all_correct",
                      "groups_all_wrong", "dominance_violations", "completion_tokens", "truncated",
                      "unscorable", "all_wrong_push_to_fluent"}
    assert m["process_score"] == float(batch["b_grid"].mean())

def test_teaching_view_prints_the_most_mixed_group_as_this_table():
    """The most mixed group (2 of 4 right beats 1 of 4, 4 of 4 and 0 of 4), its rows in order, the
    first 6 step scores (NaN as -) in a column that holds 6, completions on one line cut to 60
    characters, the question to 200, fluent failures marked no* and explained."""
    correct = torch.tensor([[False] * 4, [True] * 4, [True, False, False, False],
                            [True, True, False, False]])
    b = torch.tensor([[0.3] * 4, [0.9] * 4, [0.8, 0.1, 0.2, 0.3], [0.91, 0.42, 0.87, 0.3]])
    adv, a_out, c = compute_advantages(correct, b, "progrs", 1.0)
    texts = [f"row {r}" for r in range(16)]
    texts[12] = "2 + 2 = 4\nAnswer: 4\n"
    texts[13] = "x" * 60                                               # kept whole
    texts[14] = "y" * 61                                               # cut
    scores = [[0.5]] * 16
    scores[12] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    scores[13] = [math.nan, 0.25]
    fluent = torch.zeros(4, 4, dtype=torch.bool)
    fluent[3, 2] = True
    fluent[2, 1] = True                                                # not in the group shown
    batch = dict(correct=correct, b_grid=b, adv=adv, a_out=a_out, c=c, texts=texts,
                 step_scores=scores, fluent=fluent)
    problems = [{"question": "q0", "gold": "0"}, {"question": "q1", "gold": "1"},
                {"question": "q2", "gold": "2"}, {"question": "Q" * 205, "gold": "4"}]
    want = [f"question: {'Q' * 200}   gold: 4",
            " ok step scores                       b      c  A_out      A  completion",
            "yes 0.10 0.20 0.30 0.40 0.50 0.60  0.91  +0.91  +1.00  +1.91  2 + 2 = 4 | Answer: 4",
            f"yes   -  0.25                      0.42  +0.42  +1.00  +1.42  {'x' * 60}",
            f"no* 0.50                           0.87  +0.28  -1.00  -0.71  {'y' * 57}...",  # f32
            " no 0.50                           0.30  -0.29  -1.00  -1.28  row 15",
            "no* = fluent failure: wrong, yet b reaches the median b of recent right rollouts"]
    assert progrs.teaching_view(batch, problems).splitlines() == want
    del batch["fluent"]                                                # none marked: no footnote
    lines = progrs.teaching_view(batch, problems).splitlines()
    assert lines[4].startswith(" no 0.50") and len(lines) == 6

class Stop(Exception):
    """Raised by a fake to end a run early."""

@pytest.mark.filterwarnings("ignore:Detected call of")  # the optimizer step is faked away
def test_the_trainers_right_b_pool_keeps_only_the_last_fluent_pool_values(tmp_path, monkeypatch):
    """train() feeds step_metrics a window of the last FLUENT_POOL right b's (oldest dropped): after
    3 steps of 200 right rollouts each, the last evaluation sees the last 256 b's, in order."""
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
    args = parse("--steps", "3", "--out", str(tmp_path), "--prompts-per-step", str(P),
                 "--group-size", str(G))
    progrs.apply_defaults(args)
    problems = [{"question": "q", "gold": "1"}] * P
    with pytest.raises(Stop):
        progrs.train(torch.nn.Linear(1, 1), None, problems, problems, args, None, ToyPRM(),
                     log=lambda *a: None)
    assert progrs.FLUENT_POOL == 256 and seen["steps"] == 4
    want = [float(2000 + i) for i in range(P * G)] + [float(3000 + i) for i in range(P * G)]
    assert seen["pool"] == want[-progrs.FLUENT_POOL:]

def small(out, *flags):
    """main()'s flags for a 2-step run of the tiny model, small enough for a test."""
    return ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--eval-size", "4",
            "--max-new-tokens", "24", "--out", str(out), *flags]

def metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]

def train_rows(out):
    return [r for r in metrics(out) if "train_accuracy" in r]

@pytest.fixture(scope="module")
def quantile_run(tmp_path_factory):
    """A 3-step run with the toy PRM read at tau 0.9 (not its default 0.1) and 1 warmup step; the
    learning rate of each update is recorded."""
    out, lrs, real = tmp_path_factory.mktemp("q09"), [], progrs.update_policy

    def recording(model, optimizer, *args, **kwargs):
        lrs.append(optimizer.param_groups[0]["lr"])
        return real(model, optimizer, *args, **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(progrs, "update_policy", recording)
        progrs.main(small(out, "--prm-quantile", "0.9", "--warmup-steps", "1", "--eval-size", "8",
                          "--max-new-tokens", "40", "--steps", "3"))
    step = json.loads((out / "model" / "progrs_step.json").read_text())["step"]
    return dict(rows=metrics(out), lrs=lrs, config=json.loads((out / "config.json").read_text()),
                saved=step)

def test_prm_quantile_flag_picks_the_column_a_run_scores_with(quantile_run, tiny):
    """The run's first evaluation logs the b of the toy PRM's tau-0.9 column over the starting
    model's greedy completions, worked out here by hand; the default column (tau 0.1) gives another
    value."""
    model, tok = tiny
    problems = load_problems(TINY_TEST)[:8]
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    texts = progrs.generate(model, tok, prompts, 1, 40, 0.0, no_amp)["texts"]

    def b(column):
        return sum(coherence_score(ToyPRM().score(p["question"], split_steps(t))[:, column])
                   for p, t in zip(problems, texts)) / len(texts)
    assert quantile_run["config"]["prm_quantile"] == 0.9
    first = quantile_run["rows"][0]
    assert first["step"] == 0 and first["eval_process_score"] == pytest.approx(b(2))
    assert b(2) > b(0) + 0.05

def test_warmup_raises_the_learning_rate_linearly_from_the_first_update(quantile_run):
    """--warmup-steps 1: update k (from 1) runs at lr * k / 2 until it reaches lr, and stays."""
    lr = quantile_run["config"]["lr"]
    assert quantile_run["lrs"] == pytest.approx([lr / 2, lr, lr])

def test_steps_0_evaluates_the_model_alone_with_pass_at_k_up_to_eval_samples(tmp_path, capsys):
    """--steps 0: one evaluation, no update and no checkpoint; --eval-samples 8 gives pass@2, @4
    and @8 (pass@k's growth with k: the end-to-end test below); the startup line names them."""
    progrs.main(small(tmp_path, "--steps", "0", "--eval-samples", "8", "--eval-size", "1",
                      "--max-new-tokens", "8"))
    rows = metrics(tmp_path)
    assert len(rows) == 1 and rows[0]["step"] == 0
    assert {k for k in rows[0] if "pass@" in k} == {f"eval_sampled_pass@{k}" for k in (2, 4, 8)}
    assert not (tmp_path / "model").exists()
    assert "eval: greedy pass@1, sampled pass@1, 2, 4, ... <= 8\n" in capsys.readouterr().out

def test_a_run_shorter_than_eval_every_still_evaluates_and_saves_its_last_step(quantile_run):
    """--eval-every and --save-every default to 20 on the tiny model: a 3-step run evaluates at the
    start and at its last step, and saves the last step."""
    run = quantile_run
    assert (run["config"]["eval_every"], run["config"]["save_every"]) == (20, 20)
    assert [r["step"] for r in run["rows"] if "eval_accuracy" in r] == [0, 3]
    assert run["saved"] == 3

def test_the_problems_of_a_run_are_a_fresh_shuffle_each_epoch(tmp_path, monkeypatch):
    """Each epoch takes every training problem once, in a new shuffled order."""
    questions = [f"What is {i} + 1?" for i in range(7)]
    data = jsonl(tmp_path, "".join(json.dumps({"question": q, "answer": str(i + 1)}) + "\n"
                                   for i, q in enumerate(questions)), "train.jsonl")
    real, drawn = progrs.rollout_step, []

    def recording(model, tokenizer, problems, *args):
        drawn.append([p["question"] for p in problems])
        return real(model, tokenizer, problems, *args)
    monkeypatch.setattr(progrs, "rollout_step", recording)
    progrs.main(["--data", str(data), "--eval-size", "1", "--eval-every", "100", "--group-size",
                 "2", "--max-new-tokens", "8", "--out", str(tmp_path / "out"), "--steps", "7",
                 "--prompts-per-step", "2"])
    drawn = drawn[1:]       # the first is the teaching view's group of step 0, not a training step
    order = [q for step in drawn for q in step]
    assert len(drawn) == 7 and all(len(step) == 2 for step in drawn)
    epochs = order[:7], order[7:]
    assert sorted(epochs[0]) == sorted(questions)                     # each problem once per epoch
    assert len(set(epochs[1])) == 7
    assert epochs[0] != questions and epochs[1] != epochs[0]          # shuffled, and afresh

def test_a_batch_with_zero_advantages_leaves_the_weights_unchanged(tmp_path, monkeypatch):
    """No advantage, no change: no weight decay, no drift from anything but the policy gradient."""
    from transformers import AutoModelForCausalLM
    real = progrs.rollout_step

    def no_advantage(*args):
        batch = real(*args)
        batch["adv"] = torch.zeros_like(batch["adv"])
        return batch
    monkeypatch.setattr(progrs, "rollout_step", no_advantage)
    progrs.main(small(tmp_path, "--eval-size", "1", "--lr", "0.01", "--warmup-steps", "0"))
    before = AutoModelForCausalLM.from_pretrained(TINY_MODEL).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

def test_kl_to_the_initial_model_is_logged_and_a_bf16_autocast_run_without_it_logs_none(tmp_path):
    """train() keeps a frozen copy of the model it starts from: KL 0 at the first update (the
    policy is the reference), above 0 once the policy has moved. Without --kl-coef no reference
    exists, no kl is logged; that run, under bf16 autocast, trains with finite numbers."""
    steps = []
    for name, flags in (("kl", ["--kl-coef", "0.1"]), ("plain", ["--dtype", "bf16"])):
        progrs.main(small(tmp_path / name, "--eval-size", "1", "--steps", "3", "--lr", "0.003",
                          *flags))
        steps.append(train_rows(tmp_path / name))
    assert [r["kl"] for r in steps[0]][0] == 0.0 and all(r["kl"] > 0 for r in steps[0][1:])
    assert not any("kl" in r for r in steps[1])
    assert len(steps[1]) == 3
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in steps[1])

def test_chat_run_end_to_end(tmp_path, tiny, monkeypatch):
    """--chat reaches every generate() call, rollouts and evaluations, as the template's text."""
    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = ("{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}Solution:\n{% endif %}")
    model.save_pretrained(tmp_path / "chat_model")
    tok.save_pretrained(tmp_path / "chat_model")
    real, seen = progrs.generate, []

    def recording(model, tokenizer, prompts, *args, **kwargs):
        seen.append((prompts, args[-1] if len(args) == 5 else kwargs.get("chat")))
        return real(model, tokenizer, prompts, *args, **kwargs)
    monkeypatch.setattr(progrs, "generate", recording)
    progrs.main(small(tmp_path / "out", "--model", str(tmp_path / "chat_model"), "--chat",
                      "--defaults", "tiny"))
    assert len(seen) >= 4 and all(chat is True for _, chat in seen)   # rollouts and evaluations
    for prompts, _ in seen:                                           # the template's text
        for p in prompts:
            assert p.startswith(f"user: {progrs.CHAT_INSTRUCTION}\n")
            assert p.endswith("\nSolution:\n")
            assert "Question:" not in p
    last = metrics(tmp_path / "out")[-1]
    assert last["step"] == 2 and "eval_accuracy" in last
    assert len(seen[-1][0]) == 4                                      # the last evaluation
    assert json.loads((tmp_path / "out" / "config.json").read_text())["chat"] is True
    with pytest.raises(progrs.ProgrsError, match="--chat"):
        progrs.main(small(tmp_path / "out2", "--chat"))               # the tiny tokenizer has none

def test_train_logs_each_line_once_it_is_in_metrics_jsonl_and_returns_the_first_and_last_eval(
        tmp_path, monkeypatch):
    """Each step and eval line reaches metrics.jsonl (flushed) before its log line, which says what
    the line holds; evals at 0, every --eval-every and the last step; the step-0 table shows the
    first training problem; the summary gives sampled then greedy pass@1, first to last eval; train
    returns those two evals; the checkpoint holds every stream --resume reads, and the optimizer's
    lr is --lr's."""
    real, seen, result = progrs.train, [], {}
    out = tmp_path / "run"

    def logged(message):
        seen.append((message, (out / "metrics.jsonl").read_text()))

    def recording(*args, **kwargs):
        result.update(real(*args, **kwargs, log=logged))
    monkeypatch.setattr(progrs, "train", recording)
    start = time.perf_counter()
    progrs.main(small(out, "--steps", "3", "--eval-every", "2", "--eval-samples", "4",
                      "--save-every", "3", "--max-new-tokens", "48", "--lr", "0.0003",
                      "--warmup-steps", "0"))
    took = time.perf_counter() - start
    rows = metrics(out)
    evals = [r for r in rows if "eval_accuracy" in r]
    values = [{k: v for k, v in r.items() if k not in ("step", "t_eval")} for r in evals]
    assert values[0] != values[1] != values[2] != values[0]          # the summary's two ends differ
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    messages = [m for m, _ in seen]
    for r in rows:
        if "eval_accuracy" in r:
            line = (f"step {r['step']}: greedy pass@1 {r['eval_accuracy']:.1%} on 4 problems, "
                    f"sampled pass@1 {r['eval_sampled_accuracy']:.1%} (4/problem), trace errors "
                    f"{r['eval_trace_error_rate']:.1%} of right answers, "
                    f"{r['eval_steps_per_answer']:.2f} steps/answer")
            assert 0 <= r["t_eval"] <= took
            at_k = [r["eval_sampled_accuracy"], r["eval_sampled_pass@2"], r["eval_sampled_pass@4"]]
            assert at_k == sorted(at_k) and at_k[0] < at_k[2]       # pass@k grows with k
        else:
            line = (f"step {r['step']}: train accuracy {r['train_accuracy']:.2f}, "
                    f"b {r['process_score']:.2f}, fluent failures "
                    f"{r['fluent_failure_rate'] or 0:.2f}, entropy {r['entropy']:.3f}")
            assert all(r[k] >= 0 for k in ("t_generate", "t_score", "t_update"))
            assert r["t_generate"] + r["t_score"] + r["t_update"] <= took
        i = messages.index(line)
        assert json.dumps(r) in seen[i][1].splitlines()             # written and flushed before
    train_set = load_problems(TINY_TRAIN)
    assert messages[1].startswith(f"question: {train_set[0]['question'][:200]}   gold:")
    first, last = values[0], values[-1]
    assert result == dict(before=first, after=last)
    for name, key in (("sampled", "eval_sampled_accuracy"), ("greedy", "eval_accuracy")):
        gain = 100 * (last[key] - first[key])
        summary = (f"{name} pass@1: {first[key]:.1%} -> {last[key]:.1%} ({gain:+.1f} points), 4 "
                   "problems, 3 steps, mode progrs, lam 1.0")
        assert summary in messages[-2:]
    assert messages[-1].startswith("greedy pass@1")
    state = torch.load(out / "model" / "progrs_state.pt", weights_only=False)
    assert set(state) == set(progrs.STATE_KEYS) == {
        "step", "optimizer", "schedule", "order_rng", "queue", "right_pool", "metrics", "torch_rng",
        "cuda_rng"}
    assert state["step"] == 3 and state["metrics"] == (out / "metrics.jsonl").read_text()
    assert state["cuda_rng"] == [] and state["torch_rng"].dtype == torch.uint8
    assert state["schedule"]["base_lrs"] == [3e-4] and state["schedule"]["last_epoch"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == 3e-4
    assert isinstance(state["order_rng"], tuple) and all(isinstance(i, int) for i in state["queue"])
    assert len(state["queue"]) == len(train_set) - 3 * 2 and isinstance(state["right_pool"], list)

# --------------------------------------------------------------------------------------------------
# The run folder: metrics.jsonl, config.json and model/, swapped in whole; a used folder refused;
# --resume continues from the last checkpoint as if never stopped

def test_a_crash_or_ctrl_c_leaves_the_last_checkpoint_and_the_metrics(tmp_path, monkeypatch):
    real, calls = progrs.update_policy, []

    def update_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(progrs, "update_policy", update_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        progrs.main(small(tmp_path, "--steps", "4", "--eval-every", "2"))
    assert json.loads((tmp_path / "model" / "progrs_step.json").read_text()) == {"step": 2}
    assert [r["step"] for r in train_rows(tmp_path)] == [1, 2]
    assert not (tmp_path / "model.tmp").exists()

SLOW_SAVE = r"""
import sys, time
from pathlib import Path
import torch, progrs
model, tok = progrs.load_model(sys.argv[1], torch.device("cpu"))
out = Path(sys.argv[2])
progrs.save_checkpoint(model, tok, out, 1, {"step": 1})    # a whole checkpoint
real = model.save_pretrained
def slow(path, *args, **kwargs):                         # writes the weights, then stalls
    real(path, *args, **kwargs)
    print("writing", flush=True)
    time.sleep(600)
model.save_pretrained = slow
progrs.save_checkpoint(model, tok, out, 2, {"step": 2})  # killed while model.tmp is half written
"""

def test_a_save_killed_with_sigkill_is_cleaned_up_by_the_resuming_run(tmp_path):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(TINY_MODEL), str(out)],
                             cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()[-2000:]
        assert (out / "model.tmp" / "model.safetensors").exists()
        assert not (out / "model.tmp" / "progrs_step.json").exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    # a fresh run into the folder is refused, and touches nothing
    with pytest.raises(progrs.ProgrsError, match="--resume.*another --out"):
        progrs.prepare_out(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["model", "model.tmp"]
    # --resume cleans up, says so on one line, and keeps the whole checkpoint
    logged = []
    progrs.prepare_out(str(out), resume=True, log=logged.append)
    assert len(logged) == 1 and "removed model.tmp/" in logged[0]
    assert sorted(p.name for p in out.iterdir()) == ["model"]
    step = json.loads((out / "model" / "progrs_step.json").read_text())
    assert step == {"step": 1}                                        # the whole one

def test_a_save_killed_between_its_two_renames_gets_the_last_model_back(tmp_path, tiny):
    """model -> model.old, then model.tmp -> model: killed in between, model/ is missing."""
    model, tok = tiny
    progrs.save_checkpoint(model, tok, tmp_path, 3, {"step": 3})
    (tmp_path / "model").rename(tmp_path / "model.old")
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "progrs_step.json").write_text(json.dumps({"step": 4}))
    logged = []
    progrs.prepare_out(str(tmp_path), resume=True, log=logged.append)
    assert len(logged) == 2 and "restored model/ from model.old/" in logged[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert json.loads((tmp_path / "model" / "progrs_step.json").read_text()) == {"step": 3}
    assert (tmp_path / "model" / "model.safetensors").exists()
    # killed after the second rename: model/ is the new one, model.old/ only a leftover
    progrs.save_checkpoint(model, tok, tmp_path, 5, {"step": 5})
    shutil.copytree(tmp_path / "model", tmp_path / "model.old")
    logged.clear()
    progrs.prepare_out(str(tmp_path), resume=True, log=logged.append)
    assert len(logged) == 1 and "removed model.old/" in logged[0]
    assert json.loads((tmp_path / "model" / "progrs_step.json").read_text()) == {"step": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

def run_cli(*flags, timeout=600, **kw):
    """progrs.py in a subprocess; a fresh --out unless the flags name one."""
    out = [] if "--out" in flags else ["--out", str(Path(tempfile.mkdtemp()) / "out")]
    return subprocess.run([sys.executable, str(HERE / "progrs.py"), *out, *flags], cwd=HERE,
                          capture_output=True, text=True, timeout=timeout, **kw)

# 48 tokens: room for right answers, so the gauge's pool of right b's fills before the kill; a KL
# term, whose reference a resumed run must load from --model, not from its checkpoint; a checkpoint
# every step, so the kill comes early (after step 1 as a rule), with most of the run still to do
RESUME_RUN = ["--kl-coef", "0.05", "--steps", "6", "--prompts-per-step", "2", "--group-size", "4",
              "--eval-size", "4", "--eval-every", "2", "--save-every", "1",
              "--max-new-tokens", "48", "--eval-samples", "1"]

def without_timings(out):
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in metrics(out)]

def test_a_run_killed_after_a_checkpoint_and_resumed_writes_the_same_metrics(tmp_path):
    whole = run_cli(*RESUME_RUN, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-2000:]
    # the same run, SIGKILLed as soon as a checkpoint is whole (model/ appears only once it is)
    out = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, str(HERE / "progrs.py"), *RESUME_RUN, "--out",
                              str(out)], cwd=HERE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        while not (out / "model" / "progrs_step.json").exists():
            assert child.poll() is None, child.stderr.read()[-2000:]
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    killed_at = json.loads((out / "model" / "progrs_step.json").read_text())["step"]
    assert 1 <= killed_at < 6
    # a rerun without --resume is refused, naming both ways out, and changes nothing
    before = (out / "metrics.jsonl").read_text()
    used = f"--out {out}: holds a run .*--resume.*another --out"
    with pytest.raises(progrs.ProgrsError, match=used):
        progrs.main([*RESUME_RUN, "--out", str(out)])
    assert (out / "metrics.jsonl").read_text() == before
    resumed = run_cli(*RESUME_RUN, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {out} after step {killed_at} of 6" in resumed.stdout
    summary = whole.stdout.splitlines()[-2:]                          # the run's summary lines
    assert resumed.stdout.splitlines()[-2:] == summary
    assert without_timings(out) == without_timings(tmp_path / "whole")
    # and the last checkpoints hold the same state: a stream or pool that only acts later must match
    ends = [torch.load(d / "model" / "progrs_state.pt", weights_only=True)
            for d in (out, tmp_path / "whole")]
    for key in ("step", "queue", "right_pool", "order_rng", "schedule", "cuda_rng"):
        assert ends[0][key] == ends[1][key], key
    assert torch.equal(ends[0]["torch_rng"], ends[1]["torch_rng"])
    moments = [[t for s in e["optimizer"]["state"].values() for t in s.values()] for e in ends]
    assert len(moments[0]) > 0 and all(torch.equal(a, b) for a, b in zip(*moments, strict=True))
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(out / "model")           # still a from_pretrained folder
    # a finished run has nothing left to resume; another flag than the run's is refused
    with pytest.raises(progrs.ProgrsError, match="has done 6 of its 6 steps"):
        progrs.main([*RESUME_RUN, "--out", str(out), "--resume"])
    with pytest.raises(progrs.ProgrsError, match="--lr 0.5 differs"):
        progrs.main([*RESUME_RUN, "--lr", "0.5", "--out", str(out), "--resume"])

def test_a_damaged_run_folder_is_refused_by_resume_in_one_line(tmp_path):
    argv = small(tmp_path, "--resume")
    (tmp_path / "model").mkdir()
    state = tmp_path / "model" / "progrs_state.pt"
    state.write_bytes(b"not a torch file")
    config = tmp_path / "config.json"
    cases = ((None, "cannot read .*config.json .*No such file"),
             ("{bad", "cannot read .*config.json"), ("[1, 2]", ".*config.json holds no flags"))
    for text, why in cases:
        if text is not None:
            config.write_text(text)
        with pytest.raises(progrs.ProgrsError, match="--resume: " + why):
            progrs.main(argv)
    args = parse(*argv)
    progrs.apply_defaults(args)
    config.write_text(json.dumps(vars(args)))                        # the run's own flags
    with pytest.raises(progrs.ProgrsError, match="cannot read .*progrs_state.pt .*damaged"):
        progrs.main(argv)
    torch.save({"step": 1, "queue": []}, state)
    lacks = "progrs_state.pt lacks optimizer, schedule, order_rng, right_pool"
    with pytest.raises(progrs.ProgrsError, match=lacks):
        progrs.main(argv)
    torch.save([1, 2], state)
    with pytest.raises(progrs.ProgrsError, match="progrs_state.pt lacks step, optimizer"):
        progrs.main(argv)

def changed_value(flag, kind, saved, data, tmp_path):
    """Another valid value of `flag` than the run's own (config.json's)."""
    if kind is bool:
        return [flag]
    if isinstance(kind, list):
        return [flag, next(x for x in kind if x != saved)]
    other = {"--model": str(tmp_path / "another_model"), "--data": str(data / "train2.jsonl"),
             "--eval-data": str(data / "other.jsonl"), "--prm": str(HERE / "tiny_task" / "prm"),
             "--prm-quantile": "0.5"}
    if flag in other:
        return [flag, other[flag]]
    return [flag, str(kind(saved) + 1 if kind is int else kind(saved) * 2 + 0.5)]

def test_resume_continues_a_finished_run_and_refuses_every_flag_it_cannot_continue(
        knob_runs, knob_data, tmp_path, monkeypatch, capsys):
    rec = knob_runs["base"][0]
    out = tmp_path / "run"
    shutil.copytree(rec.out, out)
    config = json.loads((out / "config.json").read_text())
    argv = [x if x != str(rec.out) else str(out) for x in rec.argv]
    refused = []
    may_change = {"--steps", "--device", "--out", "--resume"}   # the rule, written here
    assert set(progrs.RESUME_MAY_CHANGE) == may_change
    for _, flag, kind, *_ in progrs.FLAGS:
        if flag in may_change:
            continue
        extra = changed_value(flag, kind, config[progrs.attr(flag)], knob_data, tmp_path)
        with pytest.raises(progrs.ProgrsError) as e:
            progrs.main([*argv, "--resume", *extra])
        assert str(e.value).startswith(f"--resume: {flag} "), (flag, str(e.value))
        assert "\n" not in str(e.value)
        refused.append(flag)
    assert len(refused) == len(progrs.FLAGS) - len(may_change)
    with pytest.raises(progrs.ProgrsError, match="has done 2 of its 2 steps"):
        progrs.main([*argv, "--resume"])
    loaded = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(k) or real_load(*a, **k))
    progrs.main([*argv, "--resume", "--steps", "3", "--device", "cpu"])  # a larger --steps goes on
    assert loaded[0]["map_location"] == "cpu"          # a GPU run's state resumes on any device
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 1, 2, 2, 3, 3]               # evals at 0, 1, 2, 3 and steps 1 to 3
    capsys.readouterr()

def whole_checkpoint_step(folder):
    """The step of a whole checkpoint in `folder` (weights, tokenizer, state), or None."""
    names = ("model.safetensors", "tokenizer.json", "progrs_state.pt", "progrs_step.json")
    if not all((folder / name).is_file() for name in names):
        return None
    return json.loads((folder / "progrs_step.json").read_text())["step"]

def test_a_checkpoint_swap_that_fails_between_its_renames_leaves_a_whole_checkpoint(
        tmp_path, tiny, monkeypatch):
    model, tokenizer = tiny
    progrs.save_checkpoint(model, tokenizer, tmp_path, 1, {"step": 1})
    real_rename = Path.rename

    def rename(self, target):
        if self.name == "model.tmp":               # the second rename: killed before it runs
            assert {whole_checkpoint_step(tmp_path / d) for d in ("model", "model.old")} - {None}
            raise OSError("killed between the renames")
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="killed"):
        progrs.save_checkpoint(model, tokenizer, tmp_path, 2, {"step": 2})
    monkeypatch.undo()
    assert whole_checkpoint_step(tmp_path / "model.old") == 1
    logged = []
    progrs.prepare_out(str(tmp_path), resume=True, log=logged.append)
    assert whole_checkpoint_step(tmp_path / "model") == 1 and "restored model/" in logged[0]

FULL_DISK = r"""
import pathlib, resource, signal, sys, torch
import progrs
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # over the limit, write() fails with EFBIG
model, tokenizer = progrs.load_model(sys.argv[1], torch.device("cpu"))
out = pathlib.Path(sys.argv[2])
progrs.save_checkpoint(model, tokenizer, out, 1, {"step": 1})
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))  # a full disk
try:
    progrs.save_checkpoint(model, tokenizer, out, 2, {"step": 2})
except progrs.ProgrsError as e:
    print(e)
"""

def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    """The disk fills for real (a file-size limit): safetensors raises its own error, not an
    OSError; the run says so in one line and model/ keeps the last whole checkpoint."""
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(TINY_MODEL), str(tmp_path)],
                          capture_output=True, text=True, cwd=HERE, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "could not write the step 2 checkpoint" in lines[0]
    assert "File too large" in lines[0] and "still holds the last whole one" in lines[0]
    assert whole_checkpoint_step(tmp_path / "model") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

# Every flag reaches its effect: one in-process harness runs main() with the smallest settings and
# records what each setting governs: what generate() is handed and runs under, what the update's
# log-probs read, what the PRM is given, the optimizer's steps and learning rates, the checkpoints.
# Each case changes one flag and checks the observable it governs moved as it should and that the
# others did not.

class Recorder:
    """Wraps progrs's functions for one run; the wrapped functions call the real ones."""

    def __init__(self, monkeypatch):
        self.generate = []   # (prompts, n, max_new_tokens, temperature, phase), one per call
        self.forward = []    # (phase, autocast on, autocast dtype), one per policy forward
        self.logprobs = []   # (role, temperature, rows), one per token_logprobs call
        self.prm = []        # (questions, steps) handed to the PRM, one per score_batch call
        self.columns = []    # the (S, Q) quantiles the PRM returned, flattened per call
        self.batches = []    # (problems, batch) of each rollout_step
        self.saves = []      # checkpoint steps
        self.clip = []       # max_norm handed to clip_grad_norm_
        self.lrs = []        # the learning rate of each optimizer step
        self.lam_var = []    # lam_var handed to coherence_score
        self.phase = "load"
        self.policy = None
        real = {name: getattr(progrs, name) for name in
                ("generate", "token_logprobs", "rollout_step", "update_policy", "save_checkpoint",
                 "build_prm", "load_model")}

        def load_model(*args, **kwargs):
            self.phase = "load"
            model, tokenizer = real["load_model"](*args, **kwargs)
            self.phase = "train"
            if self.policy is None:
                self.policy = model
                layer = model.base_model.layers[0].mlp

                def hook(module, inputs, output):
                    self.forward.append((self.phase, torch.is_autocast_enabled("cpu"),
                                         torch.get_autocast_dtype("cpu")))
                layer.register_forward_hook(hook)
            return model, tokenizer

        def generate(model, tokenizer, prompts, n, max_new_tokens, temperature, amp, chat=False):
            phase = "sample" if temperature > 0 else "greedy"
            self.generate.append((list(prompts), n, max_new_tokens, temperature, self.phase))
            outer, self.phase = self.phase, f"{self.phase}/{phase}"
            try:
                return real["generate"](model, tokenizer, prompts, n, max_new_tokens, temperature,
                                        amp, chat)
            finally:
                self.phase = outer

        def token_logprobs(model, input_ids, *args, **kwargs):
            role = "policy" if model is self.policy else "reference"
            self.logprobs.append((role, args[2], input_ids.shape[0], self.phase))
            return real["token_logprobs"](model, input_ids, *args, **kwargs)

        def rollout_step(model, tokenizer, problems, *args):
            outer, self.phase = self.phase, "rollout"
            try:
                batch = real["rollout_step"](model, tokenizer, problems, *args)
            finally:
                self.phase = outer
            self.batches.append((problems, batch))
            return batch

        def update_policy(model, optimizer, *args, **kwargs):
            real_step = optimizer.step

            def step(*a, **k):
                self.lrs.append(optimizer.param_groups[0]["lr"])
                return real_step(*a, **k)
            optimizer.step = step
            self.phase = "update"
            try:
                return real["update_policy"](model, optimizer, *args, **kwargs)
            finally:
                self.phase = "train"
                optimizer.step = real_step

        def save_checkpoint(model, tokenizer, out_dir, step, state=None):
            self.saves.append(step)
            return real["save_checkpoint"](model, tokenizer, out_dir, step, state)

        def build_prm(*args):
            prm = real["build_prm"](*args)
            self.prm_type = type(prm).__name__
            inner = prm.score_batch

            def score_batch(questions, steps):
                self.prm.append((self.phase, list(questions), [list(s) for s in steps]))
                out = inner(questions, steps)
                self.columns.append((self.phase, [q.clone() for q in out]))
                return out
            prm.score_batch = score_batch
            return prm

        real_coherence = progrs.coherence_score

        def coherence_score(step_scores, windows=(2, 4), lam_var=1.0):
            self.lam_var.append(lam_var)
            return real_coherence(step_scores, windows, lam_var)

        real_clip = torch.nn.utils.clip_grad_norm_

        def clip(params, max_norm, *args, **kwargs):
            self.clip.append(max_norm)
            return real_clip(params, max_norm, *args, **kwargs)

        for name, fn in dict(generate=generate, token_logprobs=token_logprobs,
                             rollout_step=rollout_step, update_policy=update_policy,
                             save_checkpoint=save_checkpoint, build_prm=build_prm,
                             load_model=load_model, coherence_score=coherence_score).items():
            monkeypatch.setattr(progrs, name, fn)
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)

@pytest.fixture(scope="module")
def knob_data(tmp_path_factory):
    """Small train and eval files: the runs read only what they need."""
    folder = tmp_path_factory.mktemp("knob_data")
    train = [json.loads(x) for x in (HERE / "tiny_task" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (HERE / "tiny_task" / "test.jsonl").read_text().splitlines()]
    files = {"train.jsonl": train[:40], "train2.jsonl": train[40:80], "test.jsonl": test[:8],
             "other.jsonl": test[8:16]}
    for name, rows in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder

SMALL = ["--steps", "2", "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "12",
         "--eval-size", "2", "--eval-every", "1", "--eval-samples", "0", "--micro-batch", "4",
         "--warmup-steps", "2"]

def knob_run(monkeypatch, tmp_path, data, extra, name):
    """main() with SMALL, then `extra`; returns the Recorder, the metrics lines and stdout."""
    rec = Recorder(monkeypatch)
    out = tmp_path / name / "parents" / "not yet made"   # --out's missing parents are made
    argv = ["--model", str(TINY_MODEL), "--data", str(data / "train.jsonl"),
            "--eval-data", str(data / "test.jsonl"), "--out", str(out), *SMALL, *extra]
    rec.argv = argv
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        progrs.main(argv)
    monkeypatch.undo()
    rec.out = out
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return rec, metrics, stdout.getvalue()

def observe(rec, metrics, stdout):
    """What the flags govern, by name: the harness compares these between runs."""
    rollouts = [g for g in rec.generate if g[4] == "rollout"]
    evals = [g for g in rec.generate if g[4] == "train"]
    steps = [m for m in metrics if "train_accuracy" in m]
    return dict(
        rollout_prompts=[len(g[0]) for g in rollouts],
        group_size=sorted({g[1] for g in rollouts}),
        cap=sorted({g[2] for g in rec.generate}),
        rollout_temperature=sorted({g[3] for g in rollouts}),
        update_temperature=sorted({t for role, t, _, phase in rec.logprobs if phase == "update"}),
        eval_calls=[(len(g[0]), g[1], g[3]) for g in evals],
        eval_questions=sorted({p for g in evals for p in g[0]}),
        train_questions=sorted({p for g in rollouts for p in g[0]}),
        chat=sorted({p.startswith("<|im_start|>") for g in rec.generate for p in g[0]}),
        autocast=sorted({(phase.split("/")[0], on, str(dtype) if on else None)
                         for phase, on, dtype in rec.forward if phase != "load"}),
        reference=sorted({t for role, t, _, phase in rec.logprobs
                          if role == "reference" and phase == "update"}),
        lam_var=sorted(set(rec.lam_var)),
        micro_batches=[rows for role, _, rows, phase in rec.logprobs
                       if phase == "update" and role == "policy"],
        optimizer_steps=len(rec.lrs), lrs=rec.lrs, clip=sorted(set(rec.clip)),
        saves=rec.saves, steps=[m["step"] for m in steps],
        eval_steps=[m["step"] for m in metrics if "eval_accuracy" in m],
        kl="kl" in steps[0], sampled="eval_sampled_accuracy" in metrics[0],
        startup=stdout.splitlines()[0],
        texts=[b["texts"] for _, b in rec.batches],
        advantages=[b["adv"].tolist() for _, b in rec.batches],
        b=[b["b_grid"].tolist() for _, b in rec.batches],
    )

def same_except(base, new, changed):
    """Every observable not in `changed` is the same in both runs; what a changed setting moves
    downstream (the sampled texts, b, the advantages) is compared only where the case says."""
    downstream = {"texts", "advantages", "b", "startup"}
    for key in base:
        if key not in changed and key not in downstream:
            assert new[key] == base[key], key

def recomputed_b(rec, lam_var):
    """b of each rollout from the step scores the run logged, at coherence penalty lam_var."""
    return [[progrs.coherence_score(s, lam_var=lam_var) for s in b["step_scores"]]
            for _, b in rec.batches]

def flat(grids):
    return [x for grid in grids for row in grid for x in row]

@pytest.fixture(scope="module")
def knob_runs(tmp_path_factory, knob_data):
    """One run of the small settings and one for each group of flags below, in one process."""
    runs = {}
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("knob_runs")
    chat_model = tmp / "chat_model"
    shutil.copytree(TINY_MODEL, chat_model)
    config = json.loads((chat_model / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (chat_model / "tokenizer_config.json").write_text(json.dumps(config))
    for name, extra in KNOB_GROUPS.items():
        extra = [str(chat_model) if x == "CHAT_MODEL" else x for x in extra]
        extra = [str(knob_data / x) if x.endswith(".jsonl") else x for x in extra]
        rec, metrics, stdout = knob_run(mp, tmp, knob_data, extra, name)
        runs[name] = (rec, metrics, observe(rec, metrics, stdout))
    runs["data"] = knob_data
    return runs

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
# Flags that govern separate observables share a run; each value differs from every other setting.
KNOB_GROUPS = {
    "base": [],
    "a": ["--group-size", "3", "--max-grad-norm", "0.5", "--lr", "1e-3", "--eval-size", "1",
          "--save-every", "2", "--lam-var", "0.5", "--micro-batch", "2"],
    "b": ["--temperature", "0.7", "--kl-coef", "0.1", "--eval-samples", "1", "--max-new-tokens",
          "9", "--warmup-steps", "0", "--ppo-epochs", "2", "--prompts-per-step", "1"],
    "c": ["--dtype", "bf16", "--steps", "3", "--eval-every", "2"],
    "d": ["--mode", "outcome", "--seed", "3", "--eval-data", "other.jsonl", "--device", "cpu"],
    "e": ["--prm", str(HERE / "tiny_task" / "prm"), "--lam", "0.5", "--eval-batch", "1", "--model",
          "CHAT_MODEL", "--chat", "--defaults", "tiny"],
    "f": ["--prm-quantile", "0.9", "--data", "train2.jsonl", "--defaults", "llm"],
}

def questions_of(path):
    return {progrs.build_prompt(p["question"]) for p in progrs.load_problems(path)}

def lengths(rec):
    """(completion lengths, truncated flags) of every rollout of the run."""
    masks = [b["completion_mask"].sum(-1) for _, b in rec.batches]
    return torch.cat(masks).tolist(), torch.cat([b["truncated"] for _, b in rec.batches]).tolist()

def check_model(base, new, runs):
    assert "chat_model" in new["startup"].split(":")[0]
    assert "tiny defaults (--defaults tiny)" in new["startup"]

def check_dtype(base, new, runs):
    assert {on for _, on, _ in base["autocast"]} == {False}
    phases = ("rollout", "train", "update")                     # sampling, greedy eval, update
    assert new["autocast"] == [(phase, True, "torch.bfloat16") for phase in phases]

def check_defaults(base, new, runs):
    assert "llm defaults (--defaults llm)" in new["startup"]
    assert new["lrs"] == pytest.approx([x / 100 for x in base["lrs"]])   # 1e-6 against 1e-4

def check_data(base, new, runs):
    assert set(new["train_questions"]) <= questions_of(runs["data"] / "train2.jsonl")
    assert set(base["train_questions"]) <= questions_of(runs["data"] / "train.jsonl")

def check_eval_data(base, new, runs):
    assert set(new["eval_questions"]) <= questions_of(runs["data"] / "other.jsonl")
    assert set(base["eval_questions"]) <= questions_of(runs["data"] / "test.jsonl")

def check_max_new_tokens(base, new, runs):
    for rec, cap in ((runs["base"][0], 12), (runs["b"][0], 9)):
        length, truncated = lengths(rec)
        assert max(length) <= cap and any(truncated)
        assert all(n == cap for n, cut in zip(length, truncated) if cut)   # the cap, hit exactly

def check_advantages(base, new, runs):
    for name, lam in (("base", 1.0), ("e", 0.5)):
        for _, b in runs[name][0].batches:
            assert torch.allclose(b["adv"], b["a_out"] + lam * b["c"])
    for _, b in runs["d"][0].batches:
        assert torch.equal(b["adv"], b["a_out"])                       # outcome: plain GRPO

def check_prm(base, new, runs):
    assert f"PRM {HERE / 'tiny_task' / 'prm'}, tau 0.5" in new["startup"]
    assert (runs["e"][0].prm_type, runs["base"][0].prm_type) == ("ModelPRM", "ToyPRM")

def check_prm_quantile(base, new, runs):
    assert "tau 0.9; eval: " in new["startup"] and "tau 0.1; eval: " in base["startup"]
    for name, column in (("base", 0), ("f", 2)):
        rec = runs[name][0]
        read = [q[:, column].tolist() for phase, call in rec.columns if phase == "rollout"
                for q in call]
        logged = [s for _, b in rec.batches for s in b["step_scores"]]
        torch.testing.assert_close(torch.tensor(flat([read])), torch.tensor(flat([logged])),
                                   rtol=0, atol=0, equal_nan=True)

def check_lam_var(base, new, runs):
    rec = runs["a"][0]
    got = [b["b_grid"].flatten().tolist() for _, b in rec.batches]
    assert flat([got]) == pytest.approx(flat([recomputed_b(rec, 0.5)]), abs=1e-6)

def check_seed(base, new, runs):
    assert new["train_questions"] != base["train_questions"]

# flag -> (the run that changes it, the observables it may move, and what they must be in the base
# run and in that run, or a check), or the reason its effect is not observed here
KNOB_CASES = {
    "--model": ("e", {"chat", "train_questions", "eval_questions"}, check_model),
    "--device": "one device on this machine: auto and cpu pick the same (pick_device's own test "
                "fakes CUDA)",
    "--dtype": ("c", {"autocast"}, check_dtype),
    "--chat": ("e", {"chat", "train_questions", "eval_questions"}, {"chat": ([False], [True])}),
    "--defaults": ("f", {"lrs"}, check_defaults),
    "--data": ("f", {"train_questions"}, check_data),
    "--eval-data": ("d", {"eval_questions"}, check_eval_data),
    "--eval-size": ("a", {"eval_calls", "eval_questions"},
                    {"eval_calls": ([(2, 1, 0.0)] * 3, [(1, 1, 0.0)] * 3)}),
    "--eval-every": ("c", {"eval_steps", "eval_calls", "saves"},
                     {"eval_steps": ([0, 1, 2], [0, 2, 3])}),
    "--eval-samples": ("b", {"eval_calls", "sampled"},       # sampled at the training temperature
                       {"sampled": (False, True), "eval_calls": ([(2, 1, 0.0)] * 3,
                                                                 [(2, 1, 0.0), (2, 1, 0.7)] * 3)}),
    "--eval-batch": ("e", {"eval_calls"}, {"eval_calls": ([(2, 1, 0.0)] * 3, [(1, 1, 0.0)] * 6)}),
    "--steps": ("c", {"steps", "optimizer_steps", "lrs", "saves", "eval_steps", "eval_calls",
                      "rollout_prompts", "micro_batches", "train_questions"},
                {"steps": ([1, 2], [1, 2, 3]), "optimizer_steps": (2, 3)}),
    "--prompts-per-step": ("b", {"rollout_prompts", "micro_batches", "train_questions"},
                           {"rollout_prompts": ([1, 2, 2], [1, 1, 1])}),
    "--group-size": ("a", {"group_size", "micro_batches"}, {"group_size": ([2], [3])}),
    "--max-new-tokens": ("b", {"cap"}, check_max_new_tokens),
    "--temperature": ("b", {"rollout_temperature", "update_temperature", "reference", "eval_calls"},
                      {"rollout_temperature": ([1.0], [0.7]), "update_temperature": ([1.0], [0.7]),
                       "reference": ([], [0.7])}),
    "--mode": ("d", set(), check_advantages),
    "--lam": ("e", set(), check_advantages),
    "--prm": ("e", set(), check_prm),
    "--prm-quantile": ("f", set(), check_prm_quantile),
    "--lam-var": ("a", {"lam_var"}, {"lam_var": ([1.0], [0.5])}),
    "--lr": ("a", {"lrs"}, {"lrs": ([1e-4 / 3, 2e-4 / 3], [1e-3 / 3, 2e-3 / 3])}),
    "--warmup-steps": ("b", {"lrs"}, {"lrs": ([1e-4 / 3, 2e-4 / 3], [1e-4] * 4)}),
    "--micro-batch": ("a", {"micro_batches"}, {"micro_batches": ([4, 4], [2] * 6)}),
    "--ppo-epochs": ("b", {"optimizer_steps", "lrs", "micro_batches"}, {"optimizer_steps": (2, 4)}),
    "--kl-coef": ("b", {"kl", "reference"}, {"kl": (False, True)}),
    "--max-grad-norm": ("a", {"clip"}, {"clip": ([1.0], [0.5])}),
    "--out": "every run of this table writes into a new --out whose parent folders do not exist",
    "--save-every": ("a", {"saves"}, {"saves": ([1, 2], [2])}),
    "--seed": ("d", {"train_questions"}, check_seed),
    "--resume": "test_resume_continues_a_finished_run_and_refuses_every_flag_it_cannot_continue",
}

def test_the_flag_table_covers_every_flag():
    assert list(KNOB_CASES) == [flag for _, flag, *_ in progrs.FLAGS]
    for flag, case in KNOB_CASES.items():
        if not isinstance(case, str):
            assert flag in KNOB_GROUPS[case[0]] + ["--model"], flag

@pytest.mark.parametrize("flag", [f for f, case in KNOB_CASES.items() if not isinstance(case, str)])
def test_each_flag_moves_what_it_governs_and_nothing_else(flag, knob_runs):
    group, _, expect = KNOB_CASES[flag]
    base, new = knob_runs["base"][2], knob_runs[group][2]
    if callable(expect):
        expect(base, new, knob_runs)
    else:
        for key, (before, after) in expect.items():
            if key == "lrs":   # floats
                before, after = pytest.approx(before), pytest.approx(after)
            assert (base[key], new[key]) == (before, after), key
    moved = [c[1] for c in KNOB_CASES.values() if not isinstance(c, str) and c[0] == group]
    same_except(base, new, set().union(*moved))

def test_the_prm_gets_each_rollouts_question_and_steps_in_order_and_is_read_at_the_runs_tau(
        knob_runs):
    """A recording PRM, for the toy PRM (tau 0.1, column 0) and the learned one (tau 0.5, its
    config's): each rollout_step hands it the question and the steps of every rollout, prompt-major
    as the policy sampled them, and the logged step scores are the column the run reads."""
    for name, column in (("base", 0), ("f", 2), ("e", 1)):
        rec = knob_runs[name][0]
        calls = [call for call in rec.prm if call[0] == "rollout"]
        returned = [out for phase, out in rec.columns if phase == "rollout"]
        assert len(calls) == len(rec.batches) > 1
        for (_, questions, steps), out, (problems, batch) in zip(calls, returned, rec.batches):
            G = batch["correct"].shape[1]
            assert questions == [p["question"] for p in problems for _ in range(G)]
            assert steps == [progrs.split_steps(t) for t in batch["texts"]]
            read = [q[:, column].tolist() for q in out]
            torch.testing.assert_close(torch.tensor(flat([read]) or [0.0]),
                                       torch.tensor(flat([batch["step_scores"]]) or [0.0]),
                                       rtol=0, atol=0, equal_nan=True)
        assert any(len(s) > 0 for _, _, steps in calls for s in steps)

def test_an_unwritable_out_or_cache_fails_before_any_model_loads(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(progrs, "load_model", lambda *a, **k: loads.append(a))
    folder = unwritable_folder()
    with pytest.raises(progrs.ProgrsError, match=f"--out {folder}: cannot write there"):
        progrs.main(["--out", str(folder)])
    monkeypatch.setenv("PROGRS_CACHE", str(folder / "progrs"))
    fake_release(monkeypatch, b'{"question": "What is 1 + 1?", "answer": "2"}\n', "train")
    with pytest.raises(progrs.ProgrsError, match="--data gsm8k: cannot write the cache"):
        progrs.main(["--out", str(tmp_path / "out"), "--data", "gsm8k"])
    assert loads == []

REAL_MODEL = os.environ.get("PROGRS_REAL_MODEL")

@pytest.mark.skipif(not REAL_MODEL, reason="set PROGRS_REAL_MODEL to a real model's folder "
                    "(bash ../shared/real_weights/fetch_qwen.sh prints one)")
def test_real_weights_one_step_of_progrs_py_runs_to_finite_metrics(tmp_path):
    """One step of python progrs.py on real weights (2 prompts x 2 rollouts, 48 tokens, --chat):
    the startup line, the load check (log-probs of the fp32 head blocks equal the model's own
    logits, or load_model refuses), every rollout ending at EOS, its answer line or the cap, and
    finite metrics."""
    problems = load_problems(GSM8K if GSM8K.exists() else TINY_TEST)[:4]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": p["question"], "answer": p["gold"]}) + "\n"
                            for p in problems))
    batches = []
    real = progrs.rollout_step

    def recording(*args):
        batches.append(real(*args))
        return batches[-1]
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(progrs, "rollout_step", recording)
        progrs.main(["--model", REAL_MODEL, "--chat", "--data", str(data), "--eval-data", str(data),
                     "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                     "--max-new-tokens", "48", "--eval-size", "2", "--eval-every", "1",
                     "--micro-batch", "4", "--out", str(tmp_path / "out")])
    startup = out.getvalue().splitlines()[0]
    assert startup.startswith(f"model {REAL_MODEL}: ")
    assert "llm defaults (not in tiny_task/)" in startup
    assert "M parameters" in startup and "4 train / 2 eval problems; PRM toy, tau 0.1" in startup
    from transformers import AutoTokenizer            # (main's load check passed: no refusal)
    tokenizer = AutoTokenizer.from_pretrained(REAL_MODEL)
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for batch in batches:
        for row, text in enumerate(batch["texts"]):
            n = int(batch["completion_mask"][row].sum())
            last = int(batch["input_ids"][row, batch["prompt_len"] + n - 1])
            found = progrs.find_answer(text)
            assert last in eos or (found and found.ended) or n == 48, text
    for line in metrics(tmp_path / "out"):
        for key, value in line.items():
            assert value is None or not isinstance(value, float) or math.isfinite(value), key

# --------------------------------------------------------------------------------------------------
# Main: the command line, end to end (progrs.py copied alone too), and bad input refused in one line

def test_end_to_end_writes_metrics_and_loadable_checkpoint_and_is_reproducible(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    runs = []
    # the same seed twice, the second evaluating half as often and sampling in its evaluations
    for name, flags in (("a", ()), ("b", ("--eval-every", "2", "--eval-samples", "2"))):
        proc = run_cli("--steps", "2", "--prompts-per-step", "4", "--group-size", "4",
                       "--eval-size", "16", "--eval-every", "1", "--max-new-tokens", "40",
                       "--out", str(tmp_path / name), *flags)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if name == "a":                                       # no sampled pass@1 in its eval lines
            line = r"^step 2: greedy pass@1 \S+ on 16 problems, trace errors "
            assert re.search(line, proc.stdout, re.M)
        runs.append([{k: v for k, v in r.items() if not k.startswith(("t_", "eval_sampled"))}
                     for r in metrics(tmp_path / name)])
    assert sum("eval_accuracy" in r for r in runs[0]) == 3            # start, step 1, step 2
    assert sum("eval_sampled_accuracy" in r for r in metrics(tmp_path / "b")) == 2
    once = [r for r in runs[0] if not ("eval_accuracy" in r and r["step"] == 1)]
    assert once == runs[1]                # same seed: same numbers, however often it evaluates
    steps = [r for r in runs[0] if "train_accuracy" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("dominance_violations", "trace_error_rate", "steps_per_answer", "process_score",
                "completion_tokens", "truncated", "bonus_incorrect_abs", "unscorable"):
        assert key in steps[0]
    assert "step scores" in proc.stdout                               # the teaching table
    assert proc.stdout.strip().splitlines()[-1].startswith("greedy pass@1: ")  # the last line
    assert json.loads((tmp_path / "a" / "model" / "progrs_step.json").read_text()) == {"step": 2}
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "a" / "model")
    assert model.config.model_type == "qwen2" and tok.eos_token_id is not None

def test_progrs_py_is_copy_pasteable_alone_it_trains_resumes_reads_a_prm_and_fails_in_one_line(
        tmp_path):
    """progrs.py copied alone into an empty folder and run from there, no path to the repository:
    it trains and checkpoints, resumes, reads a learned PRM (warning once, in a whole run, at a lam
    past the bound), and a GSM8K download it cannot make is one stderr line. It imports nothing of
    the repository and edits no import path."""
    source = (HERE / "progrs.py").read_text()
    for needle in ("tiny_task_module", "sys.path", "import progrs"):
        assert needle not in source, needle
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(HERE / "progrs.py", alone / "progrs.py")
    records = [{"question": f"What is {i} + {i + 3}?", "answer": str(2 * i + 3)} for i in range(6)]
    data = jsonl(alone, "".join(json.dumps(r) + "\n" for r in records), "problems.jsonl")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PROGRS_CACHE=str(cache), PROGRS_GSM8K_URL="http://127.0.0.1:9")

    def start(out, *flags):
        argv = [sys.executable, "progrs.py", "--model", str(TINY_MODEL), "--data", str(data),
                "--eval-data", str(data), "--out", str(out), *flags]
        return subprocess.Popen(argv, cwd=alone, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def finish(proc):
        out, err = proc.communicate(timeout=600)
        return types.SimpleNamespace(returncode=proc.returncode, stdout=out, stderr=err)
    run = ["--steps", "2", "--eval-every", "1", "--eval-size", "4", "--prompts-per-step", "2",
           "--group-size", "2", "--max-new-tokens", "16"]
    gsm8k = start(tmp_path / "gsm8k", "--data", "gsm8k")              # all three at once
    with_prm = start(tmp_path / "prm", *run, "--steps", "1", "--prompts-per-step", "1",
                     "--group-size", "8", "--prm", str(PRM), "--mode", "progrs-strict",
                     "--lam", "2")
    first = finish(start(tmp_path / "run", *run))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "llm defaults (not in tiny_task/)" in first.stdout.splitlines()[0]
    step = tmp_path / "run" / "model" / "progrs_step.json"
    assert json.loads(step.read_text()) == {"step": 2}
    resumed = finish(start(tmp_path / "run", *run, "--steps", "3", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {tmp_path / 'run'} after step 2 of 3" in resumed.stdout
    assert json.loads(step.read_text()) == {"step": 3}
    assert [r["step"] for r in train_rows(tmp_path / "run")] == [1, 2, 3]
    with_prm = finish(with_prm)
    assert with_prm.returncode == 0, with_prm.stderr[-2000:]
    assert f"PRM {PRM}, tau 0.5" in with_prm.stdout.splitlines()[0]
    warnings_seen = [x for x in with_prm.stderr.splitlines() if x.startswith("warning:")]
    assert len(warnings_seen) == 1, with_prm.stderr[-2000:]
    assert "1.33" in warnings_seen[0] and "progrs-strict" in warnings_seen[0]
    gsm8k = finish(gsm8k)
    err = gsm8k.stderr.strip().splitlines()
    assert gsm8k.returncode != 0 and len(err) == 1, gsm8k.stderr[-2000:]
    assert "--data gsm8k" in err[0] and "127.0.0.1:9/train.jsonl" in err[0]
    assert not list(cache.iterdir())

def test_main_hands_train_the_model_data_prm_and_autocast_it_built(tmp_path, monkeypatch, capsys):
    """main builds, and train receives: the fp32 model on the device, the train file whole and the
    eval file cut to --eval-size, a learned PRM read with its config's step tag and tokens and the
    run's autocast, bf16 only when asked for on a CPU; a fresh --kl-coef run loads no second model
    (train copies it). The startup line says what was built and why; the flags line is
    config.json."""
    seen = {}

    def fake_train(model, tokenizer, train_set, eval_set, args, amp, prm, state=None,
                   ref_model=None):
        seen.update(model=model, train_set=train_set, eval_set=eval_set, amp=amp, prm=prm,
                    state=state, ref_model=ref_model)
    monkeypatch.setattr(progrs, "train", fake_train)
    prm_path = save_step_tag_prm(tmp_path / "prm", tag="<alt>", config_tag=True, tokens="-+")
    progrs.main(["--prm", str(prm_path), "--dtype", "bf16", "--eval-size", "5", "--kl-coef", "0.1",
                 "--out", str(tmp_path / "a")])
    amp = seen["amp"]
    assert amp.func is torch.autocast and amp.args == ("cpu",)
    assert amp.keywords == dict(dtype=torch.bfloat16, enabled=True)
    prm = seen["prm"]
    minus, plus = (prm.tokenizer.encode(t, add_special_tokens=False)[0] for t in "-+")
    assert prm.tag == "<alt>" and prm.good_bad == [minus, plus] and prm.amp is amp
    assert seen["train_set"] == load_problems(TINY_TRAIN)
    assert seen["eval_set"] == load_problems(TINY_TEST)[:5]
    assert {p.device.type for p in seen["model"].parameters()} == {"cpu"}
    assert {p.dtype for p in seen["model"].parameters()} == {torch.float32}
    assert seen["state"] is None and seen["ref_model"] is None
    n = sum(p.numel() for p in seen["model"].parameters())
    head, flags = capsys.readouterr().out.splitlines()[:2]
    assert head == (f"model {TINY_MODEL}: {n / 1e6:.2f}M parameters, cpu (bf16 autocast); tiny "
                    f"defaults (in tiny_task/); {len(seen['train_set'])} train / 5 eval problems; "
                    f"PRM {prm_path}, tau 0.5; eval: greedy pass@1")
    config = (tmp_path / "a" / "config.json").read_text()
    assert json.loads(flags) == json.loads(config)
    assert config.startswith('{\n  "model": ')                        # indent 2: readable
    progrs.main(["--out", str(tmp_path / "b"), "--defaults", "tiny"])
    assert seen["amp"].keywords == dict(dtype=torch.bfloat16, enabled=False)
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith(f"model {TINY_MODEL}: {n / 1e6:.2f}M parameters, cpu; tiny defaults "
                           "(--defaults tiny);")

def test_bf16_on_cpu_is_used_and_eval_size_0_means_every_problem(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train(model, tok, train_set, eval_set, *a, **k):
        seen.update(n=len(eval_set))
    monkeypatch.setattr(progrs, "train", fake_train)
    progrs.main(["--eval-size", "0", "--dtype", "bf16", "--out", str(tmp_path / "a")])
    assert seen["n"] == len(load_problems(TINY_TEST)) == 500
    assert "(bf16 autocast)" in capsys.readouterr().out
    progrs.main(["--eval-size", "7", "--out", str(tmp_path / "b")])
    assert seen["n"] == 7

def test_pick_device_reads_cuda_indices_and_bf16_against_the_devices_there(monkeypatch):
    """--dtype bf16 on a CPU is bf16 autocast. With CUDA faked present: auto is cuda with bf16;
    cuda:N needs N < the device count; --dtype fp32 turns autocast off; --device cpu stays on the
    CPU; other device types are one line naming --device."""
    def picked(count, *flags):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        args = parse(*flags)
        try:
            return progrs.pick_device(args)
        except progrs.ProgrsError as e:
            assert str(e).startswith(f"--device {args.device}: not available")
            assert "\n" not in str(e)
            return "refused"
    cpu = torch.device("cpu")
    args = parse("--device", "cpu", "--dtype", "bf16")
    assert progrs.pick_device(args) == (cpu, True)
    assert progrs.pick_device(parse("--device", "cpu")) == (cpu, False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert picked(1) == (torch.device("cuda"), True)
    assert picked(1, "--device", "cuda") == (torch.device("cuda"), True)
    assert picked(1, "--device", "cuda:0", "--dtype", "fp32") == (torch.device("cuda:0"), False)
    assert picked(1, "--device", "cuda:1") == "refused"
    assert picked(2, "--device", "cuda:1") == (torch.device("cuda:1"), True)
    assert picked(2, "--device", "cuda:2") == "refused"
    assert picked(2, "--device", "cpu") == (cpu, False)
    assert picked(2, "--device", "mps") == picked(2, "--device", "gpu") == "refused"

@pytest.mark.parametrize("mode,lam,warns", [
    ("progrs-strict", 2.0, True), ("progrs-strict", 1.3, False), ("absolute", 1.0, True),
    ("absolute", 0.99, False), ("progrs", 2.0, False), ("progrs", 2.6, True),
    ("outcome", 50.0, False)])
def test_a_lam_that_can_rank_wrong_above_right_warns_in_every_mode(mode, lam, warns, tmp_path,
                                                                   monkeypatch, capsys):
    """One stderr line naming --lam, the bound (progrs-strict at G = 8: 1.33), the mode and G."""
    monkeypatch.setattr(progrs, "train", lambda *a, **k: {})    # the warning comes before training
    progrs.main(["--mode", mode, "--lam", str(lam), "--steps", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert ("warning: --lam" in err) == warns, err
    warning = [x for x in err.splitlines() if x.startswith("warning:")]
    assert len(warning) == int(warns), err
    if warns:
        assert f"--mode {mode}" in warning[0] and "G=8" in warning[0]
        assert f"{max_dominant_lam(8, mode):.2f}" in warning[0]

@pytest.fixture(scope="module")
def tiny_elsewhere(tmp_path_factory):
    """The tiny model saved outside tiny_task/: a user's own small model."""
    path = tmp_path_factory.mktemp("mine") / "model"
    shutil.copytree(TINY_MODEL, path)
    return path

def offline_env(tmp_path):
    # loopback, closed port: the download fails at once and nothing leaves the machine
    return dict(os.environ, HF_HUB_OFFLINE="1", PROGRS_CACHE=str(tmp_path / "cache"),
                PROGRS_GSM8K_URL="http://127.0.0.1:9/gsm8k")

def test_a_model_outside_tiny_task_defaults_to_gsm8k_and_says_so(tiny_elsewhere, tmp_path,
                                                                 monkeypatch, capsys):
    proc = run_cli("--model", str(tiny_elsewhere), "--out", str(tmp_path / "out"),
                   env=offline_env(tmp_path))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1, proc.stderr[-2000:]
    assert "--data gsm8k" in err[0] and "127.0.0.1:9/gsm8k/train.jsonl" in err[0]
    # with the GSM8K splits in the cache it starts, and its startup line names the choice
    cache = tmp_path / "cache"
    cache.mkdir()
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
            for i in range(4)]
    for split in ("train", "test"):
        (cache / f"gsm8k_{split}.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    flags = small(tmp_path / "out2", "--model", str(tiny_elsewhere), "--max-new-tokens", "8",
                  "--micro-batch", "4", "--eval-batch", "8", "--steps", "1")
    for key in ("PROGRS_CACHE", "PROGRS_GSM8K_URL"):                  # in this process: faster
        monkeypatch.setenv(key, offline_env(tmp_path)[key])
    progrs.main(flags)
    assert "llm defaults (not in tiny_task/)" in capsys.readouterr().out.splitlines()[0]
    config = json.loads((tmp_path / "out2" / "config.json").read_text())
    assert config["data"] == "gsm8k" and config["lr"] == 1e-6 and config["eval_every"] == 25

@NEEDS_GSM8K
def test_an_llm_defaults_run_trains_two_steps_on_gsm8k_files(tiny_elsewhere, tmp_path):
    flags = small(tmp_path / "out", "--model", str(tiny_elsewhere), "--data", str(GSM8K),
                  "--eval-data", str(GSM8K), "--max-new-tokens", "16", "--micro-batch", "2",
                  "--eval-batch", "4")
    proc = run_cli(*flags, env=offline_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "llm defaults" in proc.stdout
    steps = train_rows(tmp_path / "out")
    assert len(steps) == 2 and all(r["completion_tokens"] <= 16 for r in steps)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["lr"] == 1e-6 and config["eval_every"] == 25          # the LLM defaults

def test_an_unreachable_hub_id_is_one_line_without_the_hubs_retry_warnings(tmp_path, monkeypatch,
                                                                          caplog):
    import logging
    import transformers
    hub = logging.getLogger("huggingface_hub")
    hub.setLevel(logging.WARNING)                 # the library's own default, whatever ran before

    def offline(name, *args, **kwargs):  # the hub client without a network: warn, retry, raise
        http = logging.getLogger("huggingface_hub.utils._http")
        http.warning(f"thrown while requesting HEAD {name}")
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    unreachable = "--model some-org/some-model: could not load it .*connect"
    with pytest.raises(progrs.ProgrsError, match=unreachable):
        progrs.main(small(tmp_path, "--model", "some-org/some-model", "--defaults", "tiny"))
    hub_records = [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert [r.getMessage() for r in hub_records] == []

# Bad input: one stderr line naming the flag or file, no traceback, a non-zero exit, and where the
# input is --out, --device or data, before the model loads. All cases run in one Python process,
# each as `python progrs.py ...` would (runpy, __main__), with the model loader watched.

CLI_RUNNER = r"""
import contextlib, io, json, runpy, sys, traceback
import transformers
loads, real = [], transformers.AutoModelForCausalLM.from_pretrained
def watched(*a, **k):
    loads.append(a[0])
    return real(*a, **k)
transformers.AutoModelForCausalLM.from_pretrained = watched
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err, n = io.StringIO(), len(loads)
    sys.argv = ["progrs.py", *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path("progrs.py", run_name="__main__")
            code = 0
        except SystemExit as e:   # sys.exit("message") prints the message and exits with 1
            code = e.code if e.code is None or isinstance(e.code, int) else 1
            if code == 1 and isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = "uncaught"
    results[name] = dict(code=code, stderr=err.getvalue(), model_loaded=len(loads) > n)
print(json.dumps(results))
"""

def truncated_copy(src, dst):
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    return dst

BAD_INPUTS = [
    "truncated model weights", "device mps", "device cuda:3", "out below a file",
    "out cannot be created", "out is a file", "model is a plain file", "truncated prm weights",
    "answer true", "answer false", "answer null", "answer list", "model is a token classifier",
    "model without tokenizer", "out empty", "seed negative", "micro-batch 0", "flag unknown",
    "data missing", "group size 1", "mode unknown", "lam negative", "lam inf", "lr nan",
    "out is progrs.py", "model missing", "model folder without config", "prm missing",
    "prm is the policy", "prm quantile not its own", "save-every 0", "data not json",
    "eval data without answer", "data not utf-8", "out holds a run", "resume an empty out"]

@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory, quantile_head):
    """{case: (result, needles, before the model loads)} for every bad input in BAD_INPUTS."""
    tmp = tmp_path_factory.mktemp("bad_input")
    a_file = tmp / "a_file.txt"
    a_file.write_text("not a folder\n")
    good = json.dumps({"question": "What is 1 + 1?", "answer": "2"})
    data = {}
    records = (("answer true", {"answer": True}), ("answer false", {"answer": False}),
               ("answer null", {"answer": None}), ("answer list", {"answer": ["2"]}))
    for name, record in records:
        data[name] = tmp / (name.replace(" ", "_") + ".jsonl")
        second = json.dumps({"question": "What is 2 + 2?", **record})
        data[name].write_text(good + "\n" + second + "\n")
    model = truncated_copy(TINY_MODEL, tmp / "trunc_model")
    prm = truncated_copy(PRM, tmp / "trunc_prm")
    not_json = jsonl(tmp, good + '\n{"question": oops}\n', "bad.jsonl")
    no_answer = jsonl(tmp, '{"question": "What is 1 + 1?"}\n', "missing_field.jsonl")
    latin1 = tmp / "latin1.jsonl"
    latin1.write_bytes('{"question": "Caf\u00e9 1 + 1?", "answer": "2"}\n'.encode("latin-1"))
    used = tmp / "used_out"
    used.mkdir()
    (used / "metrics.jsonl").write_text("{}\n")
    no_tokenizer = tmp / "no_tokenizer"
    shutil.copytree(TINY_MODEL, no_tokenizer)
    for f in no_tokenizer.glob("tokenizer*"):
        f.unlink()
    cases = {  # name: (flags, needles in the one line, refused before the model loads)
        "truncated model weights": (["--model", str(model), "--defaults", "tiny"],
                                    [f"--model {model}"], False),
        "device mps": (["--device", "mps"], ["--device mps"], True),
        "device cuda:3": (["--device", "cuda:3"], ["--device cuda:3"], True),
        "out below a file": (["--out", str(a_file / "out")], [f"--out {a_file / 'out'}"], True),
        "out cannot be created": (["--out", "/proc/x/y"], ["--out /proc/x/y"], True),
        "out is a file": (["--out", str(a_file)], [f"--out {a_file}"], True),
        "model is a plain file": (["--model", str(a_file)], [f"--model {a_file}", "a file"], True),
        "truncated prm weights": (["--prm", str(prm)], [f"--prm {prm}"], False),
        **{name: (["--data", str(path)], [f"{path}:2"], True) for name, path in data.items()},
        "model is a token classifier": (["--model", str(quantile_head), "--defaults", "tiny"],
                                        ["--model", "TokenClassification", "causal LM"], False),
        "model without tokenizer": (["--model", str(no_tokenizer)],
                                    ["--model", "no tokenizer files"], True),
        "out empty": (["--out", ""], ["--out", "empty"], True),
        "seed negative": (["--seed", "-1"], ["--seed", ">= 0"], True),
        "micro-batch 0": (["--micro-batch", "0"], ["--micro-batch", ">= 1"], True),
        "flag unknown": (["--prm-tag", "ки"], ["unrecognized arguments: --prm-tag"], True),
        "data missing": (["--data", "nope.jsonl"], ["nope.jsonl"], True),
        "group size 1": (["--group-size", "1"], ["--group-size"], True),
        "mode unknown": (["--mode", "best"], ["--mode"], True),
        "lam negative": (["--lam", "-1"], ["--lam"], True),
        "lam inf": (["--lam", "inf"], ["--lam"], True),
        "lr nan": (["--lr", "nan"], ["--lr"], True),
        "out is progrs.py": (["--out", "progrs.py"], ["--out"], True),
        "model missing": (["--model", "./no/such/model"], ["--model"], True),
        "model folder without config": (["--model", "tiny_task"], ["config.json"], True),
        "prm missing": (["--prm", "./no/such/prm"], ["--prm"], False),
        "prm is the policy": (["--prm", "tiny_task/model"], ["--prm", "step tag"], False),
        "prm quantile not its own": (["--prm-quantile", "0.3"], ["--prm-quantile"], False),
        "save-every 0": (["--save-every", "0"], ["--save-every"], True),
        "data not json": (["--data", str(not_json)], [f"{not_json}:2"], True),
        "eval data without answer": (["--eval-data", str(no_answer)],
                                     [f"{no_answer}:1", "answer"], True),
        "data not utf-8": (["--data", str(latin1)], [str(latin1), "UTF-8"], True),
        "out holds a run": (["--out", str(used)], [f"--out {used}", "--resume", "another --out"],
                            True),
        "resume an empty out": (["--out", str(tmp / "empty_out"), "--resume"],
                                ["--resume", "no checkpoint"], True),
    }
    assert sorted(cases) == sorted(BAD_INPUTS)
    # small settings, so that a check that lets its fault through still finishes soon
    quick = ["--steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--eval-size", "1",
             "--max-new-tokens", "4"]
    argv = {name: quick + ([] if "--out" in flags else ["--out", str(tmp / "out")]) + flags
            for name, (flags, _, _) in cases.items()}
    proc = subprocess.run([sys.executable, "-c", CLI_RUNNER, json.dumps(argv)], cwd=HERE,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {name: (results[name], needles, early) for name, (_, needles, early) in cases.items()}

@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_it_and_early(bad_input_runs, case):
    if case == "device cuda:3" and torch.cuda.device_count() > 3:
        pytest.skip("this machine has a cuda:3")
    result, needles, before_model = bad_input_runs[case]
    err = result["stderr"].strip().splitlines()
    assert result["code"] not in (0, None, "uncaught"), result["stderr"][-2000:]
    assert len(err) == 1 and all(n in err[0] for n in needles), result["stderr"][-2000:]
    if before_model:
        assert not result["model_loaded"], "refused only after the model had loaded"

def test_the_shuffle_control_draws_its_permutations_from_the_seed(monkeypatch):
    controls = tiny_task_tool("controls")
    correct = torch.zeros(4, 8, dtype=torch.bool)
    b = torch.linspace(0, 1, 32).view(4, 8)
    seen = []

    def fake_main(argv):   # the run's calls to compute_advantages, without a model
        seen.append([progrs.compute_advantages(correct, b, "progrs", 1.0)[2] for _ in range(3)])
    real = progrs.compute_advantages
    monkeypatch.setattr(progrs, "main", fake_main)
    for seed in ("0", "0", "1"):
        monkeypatch.setattr(progrs, "compute_advantages", real)   # controls.main wraps it
        torch.manual_seed(0)
        controls.main(["--bonus-control", "shuffle", "--seed", seed])
    same, other = [torch.stack(s[1:]) for s in seen[:2]], torch.stack(seen[2][1:])
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], other)

def test_trl_gathers_scores_before_centering_and_keeps_its_own_slice_unscaled(monkeypatch):
    """Process 1 of 2 (on a node whose other process is 0): its scores are gathered with process 0's
    before the advantages are computed, it keeps rows n..2n of them as computed (no second scaling),
    and its prompts are the templated ones when chat=True."""
    trl_progrs = trl_tool()
    from trl import GRPOConfig
    model, tokenizer = progrs.load_model(str(TINY_MODEL), torch.device("cpu"))
    problems = progrs.load_problems(HERE / "tiny_task" / "train.jsonl")[:2]
    G = 4
    texts = ["1 + 1 = 2\nAnswer: 5", "Answer: 7", "2 + 2 = 5\nAnswer: 9", "Answer: 8"]  # process 1
    ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]

    def rollout(prompts, trainer):
        return dict(prompt_ids=[tokenizer(p)["input_ids"] for p in prompts], completion_ids=ids,
                    logprobs=None)
    other = torch.tensor([[1.0, 0.7], [0.0, 0.6], [0.0, 0.1], [1.0, 0.2]])  # process 0's rows
    monkeypatch.setattr(trl_progrs, "gather", lambda local: torch.cat([other, local]))
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, num_generations=G,
                      per_device_train_batch_size=G, max_completion_length=16, report_to=[],
                      gradient_checkpointing=False, save_strategy="no", disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl_progrs.ProgrsGRPOTrainer(
            model=model, processing_class=tokenizer, args=args, prm=progrs.ToyPRM(),
            train_dataset=trl_progrs.progrs_dataset(problems), rollout_func=rollout)
    monkeypatch.setattr(type(trainer.accelerator), "process_index", property(lambda self: 1))
    monkeypatch.setattr(type(trainer.accelerator), "local_process_index", property(lambda self: 0))
    trainer.model.train()
    rows = [dict(prompt=progrs.build_prompt(problems[1]["question"]), **problems[1])] * G
    got = trainer._generate_and_score_completions(rows)["advantages"]
    mine = progrs.score_completions([problems[1]] * G, texts, progrs.ToyPRM(), 0, 1.0)
    scores = torch.cat([other, torch.tensor([mine["correct"], mine["b"]]).T.float()])  # (2G, 2)
    want, _, _ = progrs.compute_advantages(scores[:, 0].bool().view(2, G), scores[:, 1].view(2, G),
                                           "progrs", 1.0)
    assert torch.equal(got, want[1])                        # rows G..2G, exactly as computed
    assert not torch.allclose(got, want[0])                  # process 0's rows are not its own
    templated = trl_progrs.progrs_dataset(problems, TemplatedTokenizer(), chat=True)
    question = problems[0]["question"]
    assert templated[0]["prompt"].endswith(f"<user>{progrs.CHAT_INSTRUCTION}\n{question}<bot>")

class TemplatedTokenizer:
    chat_template = "a template"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<bot>"

# --------------------------------------------------------------------------------------------------
# Beside the trainer (tiny_task/): the bundled model, the adversarial corpus, the experiment
# controls and comparisons, the TRL trainer, the README's numbers and tables, the repository

def test_committed_warm_start_leaves_room_for_rl(tiny, monkeypatch):
    """The tiny model is what the default run trains: greedy accuracy between 40% and 70%, a mix of
    step-by-step and one-line (hasty) answers, and steps-per-answer in between
    (tiny_task/build_model.py)."""
    model, tok = tiny
    problems = load_problems(TINY_TEST)
    args = parse("--eval-batch", "256", "--max-new-tokens", "64")
    calls = recorded_generate(monkeypatch)
    res = progrs.evaluate(model, tok, problems, args, ToyPRM(), no_amp)
    assert 0.40 <= res["eval_accuracy"] <= 0.70
    texts = [x for _, batch in calls for x in batch]
    one_line = sum(len(split_steps(t)) == 1 for t in texts) / len(problems)
    assert 0.2 <= one_line <= 0.8
    assert 1.2 <= res["eval_steps_per_answer"] <= 2.8

def test_adversarial_corpus_scores_without_an_exception():
    adversarial = tiny_task_tool("adversarial")
    texts = adversarial.corpus()
    results = adversarial.score_all(texts)
    assert set(results) == set(texts) and len(texts) >= 20
    for name, (_, s) in results.items():
        assert not s["unscorable"], name                              # scored, not caught
        assert 0.0 <= s["b"] <= 1.0 and not s["correct"], name
    assert results["nested boxes"][1]["n_steps"] == 0

def test_compare_reads_rollouts_to_a_target_between_evaluations_and_pairs_seeds():
    """tiny_task/compare.py's verdict arithmetic: the first crossing after training began, linear
    between evaluations, in rollouts (16 prompts x 8 per step); differences paired by seed."""
    compare = tiny_task_tool("compare")
    pts = [(0, 0.4), (3, 0.3), (6, 0.5), (9, 0.5)]
    assert compare.rollouts_to(pts, 0.35) == pytest.approx(3.75 * 128)  # not step 0: untrained
    assert compare.rollouts_to(pts, 0.5) == pytest.approx(6 * 128)
    assert compare.rollouts_to(pts, 0.6) is None
    m, se = compare.paired([0.5, 0.6, 0.9], [0.4, 0.4, 0.6])
    assert m == pytest.approx(0.2) and se == pytest.approx(0.1 / math.sqrt(3))
    assert compare.beyond(0.2, 0.09) and not compare.beyond(0.2, 0.1)

def pace_runs(late_gain, drop=0.0, trace_up=0.0, spread=0.002, seeds=5):
    """Made-up pace.py results, {(arm, seed): run}: evaluations at steps 0, 8, 16, 24, 32 whose
    sampled pass@1 is outcome-only's plus late_gain[arm] from step 16 on (a seed's jitter of +-0.2
    points), and +0.2 at step 8 for every arm but outcome (a gain the verdicts must not count);
    progrs's pass@32 is outcome-only's minus drop (+- its jitter), its trace errors + trace_up."""
    res = {}
    for s in range(seeds):
        for arm, gain in late_gain.items():
            jitter = (s - 2) * spread * (arm != "outcome")
            rows = []
            for t in (0, 8, 16, 24, 32):
                early = 0.2 * (arm != "outcome") * (t == 8)
                acc = 0.05 + t / 200 + (gain + jitter if t >= 16 else early)
                rows.append(dict(step=t, eval_accuracy=acc, eval_sampled_accuracy=acc,
                                 eval_sampled_fluent_failure_rate=0.1 + (t > 0) * gain / 2))
            rows += [dict(step=t, train_accuracy=0.1, groups_all_wrong=8) for t in range(1, 33)]
            pass32 = 0.9 - (drop + jitter if arm == "progrs" else 0.0)
            end = {"eval_accuracy": 0.5, "eval_sampled_accuracy": rows[4]["eval_sampled_accuracy"],
                   "eval_sampled_trace_error_rate": 0.05 - gain / 10 + trace_up * (arm == "progrs"),
                   "eval_sampled_pass@32": pass32,
                   **{f"eval_sampled_pass@{k}": 0.5 for k in (2, 4, 8, 16)}}
            res[(arm, s)] = dict(rows=rows, wall_s=1.0, passk=end, passk_wall_s=1.0)
    return res

def test_pace_verdicts_follow_the_registered_rules():
    """results_pace.md's rules on made-up runs: gains from step 16 on (step 8's +20 points never
    counted), H10's 5-point bar and noise, H11's third, H13's and H8's two thirds, H14's bands,
    H15's 2 standard errors; the rules flip where the bars say."""
    pace = tiny_task_tool("pace")
    a = types.SimpleNamespace(**pace.PACE_SET, jobs=2)
    gains = {"outcome": 0.0, "progrs": 0.06, "absolute": -0.02, "progrs+shuffle": 0.019,
             "progrs-strict": 0.041, "progrs+constant": 0.019, "progrs+allwrong": 0.039,
             "progrs+mixed": 0.01}
    runs = pace_runs(gains, drop=0.001)
    text = "\n".join(pace.report(runs, runs[("outcome", 0)]["passk"], a))
    verdict = {line.split(":")[0].strip("- *"): line for line in text.splitlines()
               if line.startswith("- **")}
    assert "H10 (the gain): supported" in verdict["H10 (the gain)"]
    assert "+6.0 ± 0.1 points" in verdict["H10 (the gain)"]
    assert ": supported" in verdict["H11 (the PRM's information)"]                # 1.9 <= 6 / 3
    assert ": supported" in verdict["H13 (the ranking, not the lift)"]            # 4.1 >= 4
    assert ": not supported" in verdict["H8 (all-wrong against mixed)"]         # 3.9 < 4
    assert "little of the gain" in verdict["H14 (the push alone)"]                # 1.9 <= 2
    assert "Fragile" in verdict["H14 (the push alone)"]                   # 2.0 - 1.9: within noise
    assert ": supported" in verdict["H12 (right for the right reasons)"]          # 4.4% < 5%
    assert "H15 (no diversity bought): supported" in verdict["H15 (no diversity bought)"]
    assert "-0.1 ± 0.1 points" in verdict["H15 (no diversity bought)"]    # within 2 SE of 0
    gains.update({"progrs": 0.049, "progrs+shuffle": 0.017, "progrs+constant": 0.03})
    runs = pace_runs(gains, drop=0.0035, trace_up=0.01)
    text = "\n".join(pace.report(runs, runs[("outcome", 0)]["passk"], a))
    assert "H10 (the gain): not supported" in text and "H11 (the PRM's information): not " in text
    assert "the push alone gives part of the gain" in text              # 3.0 of 4.9
    assert "H15 (no diversity bought): not supported" in text            # -0.35 is 2.5 SE below 0
    assert "H12 (right for the right reasons): not supported" in text    # 4.5% + 1 point > 5%
    gains["progrs"] = 0.06
    runs = pace_runs(gains, spread=0.05)                                 # +6 points, within noise
    text = "\n".join(pace.report(runs, runs[("outcome", 0)]["passk"], a))
    assert "H10 (the gain): not supported" in text and "+6.0 ± 3.5 points" in text

def test_bonus_controls_keep_values_or_offsets_and_drop_the_link():
    control_bonus = tiny_task_tool("controls").control_bonus
    s, _ = random_groups(n=500)
    b = (s + 2) / 4
    shuffled = control_bonus(b, "shuffle", torch.Generator().manual_seed(0))
    assert torch.equal(shuffled.sort(-1).values, b.sort(-1).values)    # same values in each group
    assert (shuffled != b).any(-1).float().mean() > 0.9               # but moved
    const = control_bonus(b, "constant")
    assert torch.allclose(const, torch.full_like(b, float(b.mean())))
    assert control_bonus(b, "none") is b

def test_bonus_groups_zero_exactly_in_excluded_types_and_progrs_elsewhere(monkeypatch):
    """tiny_task/controls.py --bonus-groups: the compute_advantages it hands progrs.main (not run)
    keeps the bonus in the group types named and zeroes it, A = A_out, in the others."""
    import itertools
    controls = tiny_task_tool("controls")
    uncontrolled = progrs.compute_advantages
    # two groups of each type, G = 4; every group has a nonzero centred bonus somewhere
    correct = torch.tensor([[True, False, False, False], [False, True, True, False],
                            [False] * 4, [False] * 4, [True] * 4, [True] * 4])
    b = torch.tensor([[0.6, 0.6, 0.2, 0.1], [0.3, 0.5, 0.0, 0.9], [0.6, 0.2, 0.2, 0.2],
                      [0.0, 0.4, 0.1, 0.9], [0.6, 0.6, 0.3, 0.3], [0.1, 0.8, 0.5, 0.2]])
    kind = ["mixed", "mixed", "all-wrong", "all-wrong", "all-right", "all-right"]
    assert controls.group_types(correct) == kind
    lam = 1.5
    for mode in ("progrs", "progrs-strict"):
        ref_adv, ref_out, ref_bonus = uncontrolled(correct, b, mode, lam)
        assert all((ref_bonus[g] != 0).any() for g in range(len(kind)))
        for n in (1, 2, 3):
            for keep in itertools.combinations(controls.GROUP_TYPES, n):
                monkeypatch.setattr(progrs, "compute_advantages", uncontrolled)
                monkeypatch.setattr(progrs, "main", lambda argv: progrs.compute_advantages)
                flags = ["--bonus-groups", ",".join(keep), "--mode", mode, "--lam", str(lam)]
                adv, a_out, bonus = controls.main(flags)(correct, b, mode, lam)
                for g, t in enumerate(kind):
                    if t in keep:
                        assert torch.equal(bonus[g], ref_bonus[g]), (keep, t)
                        assert torch.equal(adv[g], ref_adv[g]), (keep, t)
                    else:
                        assert torch.equal(bonus[g], torch.zeros(4)), (keep, t)
                        assert torch.equal(adv[g], ref_out[g]), (keep, t)
                assert torch.equal(a_out, ref_out)

def test_bonus_groups_flags():
    controls = tiny_task_tool("controls")
    found, rest = controls.split_control(["--mode", "progrs", "--bonus-groups", "mixed,all-wrong",
                                          "--seed", "3"])
    assert found == {"control": None, "groups": ("mixed", "all-wrong")}
    assert rest == ["--mode", "progrs", "--seed", "3"]
    for bad in (["--bonus-groups", "wrong"], ["--bonus-groups"], ["--bonus-control", "none"]):
        with pytest.raises(SystemExit):
            controls.split_control(bad)

# TRL: ProgrsGRPOTrainer (tiny_task/trl_progrs.py) gives progrs's advantages and gradient

TRL_PIN = "1.16.0"   # the version trl_progrs.py was written against; .ci/run installs it
TRL_SKIP = f"TRL is not installed (pip install trl=={TRL_PIN}, as .ci/run does)"
TRL_G = 8
TRL_ALL_RIGHT = ["5 + 5 = 10\n10 - 10 = 0\nAnswer: 0", "5 + 5 - 10 = 0\nAnswer: 0",
                 "5 + 5 = 11\n11 - 10 = 0\nAnswer: 0", "5 + 5 = 10\n10 - 10 = 1\nAnswer: 0",
                 "Answer: 0", "5 + 5 = 10\nAnswer: 0", "10 - 10 = 0\nAnswer: 0",
                 "5 + 5 = 12\n12 - 10 = 2\nAnswer: 0"]   # a group of 8 right answers, mixed steps

def trl_tool():
    """tiny_task/trl_progrs.py, or a skip where TRL is not installed."""
    pytest.importorskip("trl", reason=TRL_SKIP)
    return tiny_task_tool("trl_progrs")

@functools.lru_cache(maxsize=None)
def trl_batch():
    """8 train problems x 8 completions sampled at temperature 1 (seeded), as progrs.generate
    returns them; prompts of 5 lengths, so left padding is exercised."""
    model, tokenizer = progrs.load_model(str(TINY_MODEL), torch.device("cpu"))
    problems = load_problems(TINY_TRAIN)[:8]
    prompts = [progrs.build_prompt(p["question"]) for p in problems]
    torch.manual_seed(0)
    batch = progrs.generate(model, tokenizer, prompts, TRL_G, 64, 1.0, contextlib.nullcontext)
    return model, tokenizer, problems, batch

def trl_trainer(model, tokenizer, problems, rollout_func=None, **config):
    """A ProgrsGRPOTrainer on CPU; `config` overrides GRPOConfig fields."""
    from trl import GRPOConfig
    trl_progrs = trl_tool()
    args = dict(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False, num_generations=TRL_G,
                per_device_train_batch_size=TRL_G, max_completion_length=64,
                gradient_checkpointing=False, report_to=[], save_strategy="no", disable_tqdm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # rollout_func is marked experimental; deprecation notices
        return trl_progrs.ProgrsGRPOTrainer(
            model=model, processing_class=tokenizer, args=GRPOConfig(**{**args, **config}),
            prm=ToyPRM(), train_dataset=trl_progrs.progrs_dataset(problems),
            rollout_func=rollout_func)

def bare_trl_trainer(monkeypatch):
    """ProgrsGRPOTrainer with GRPOTrainer's own __init__ skipped (G = 8): its own checks alone."""
    import trl
    trainer = trl_tool().ProgrsGRPOTrainer
    monkeypatch.setattr(trl.GRPOTrainer, "__init__",
                        lambda self, *a, **k: setattr(self, "num_generations", 8))
    return trainer

def test_trl_advantages_equal_compute_advantages_in_every_mode():
    """On the same completions (sampled ones: all-wrong and mixed groups; and a written all-right
    group), TRL's pipeline with ProgrsGRPOTrainer hands the loss progrs.compute_advantages's
    advantages in every mode, to 1e-6. TRL's own advantages (sample std + 1e-4) would be ~6% off."""
    trl_tool()
    model, tokenizer, problems, batch = trl_batch()
    problems = problems + [{"question": "What is 5 + 5 - 10?", "gold": "0"}]
    texts = batch["texts"] + TRL_ALL_RIGHT
    per_row = [p for p in problems for _ in range(TRL_G)]
    ids = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == texts  # TRL decodes these back

    def rollout(prompts, trainer):   # TRL's hook for bringing one's own completions
        return dict(prompt_ids=[tokenizer(p)["input_ids"] for p in prompts], completion_ids=ids,
                    logprobs=None)

    trainer = trl_trainer(model, tokenizer, problems, rollout,
                          per_device_train_batch_size=len(texts))
    trainer.model.train()
    rows = [dict(prompt=progrs.build_prompt(p["question"]), **p) for p in per_row]
    s = progrs.score_completions(per_row, texts, ToyPRM(), 0, 1.0)
    correct = torch.tensor(s["correct"]).view(-1, TRL_G)
    b = torch.tensor(s["b"], dtype=torch.float32).view(-1, TRL_G)
    k = correct.sum(-1)
    assert (k == 0).any() and ((k > 0) & (k < TRL_G)).any() and (k == TRL_G).any()
    assert b[~correct].unique().numel() > 2 and b[correct].unique().numel() > 2
    for mode in progrs.MODES:
        for lam in (1.0, 0.5):
            trainer.progrs_mode, trainer.lam = mode, lam
            got = trainer._generate_and_score_completions(rows)["advantages"]
            want, _, _ = compute_advantages(correct, b, mode, lam)
            assert (got - want.flatten()).abs().max() <= 1e-6, (mode, lam)

def test_trl_dapo_gradient_matches_progrs_update():
    """On the same completions and advantages, the gradient of TRL's loss equals the gradient of
    progrs.update_policy's loss. TRL settings that make it so: loss_type="dapo" (sum over tokens
    divided by the batch's token count, as progrs does), beta=0 (progrs's --kl-coef 0),
    num_iterations=1 and steps_per_generation = gradient_accumulation_steps (ratio 1: progrs's
    --ppo-epochs 1), the same temperature in both (0.7 here: both divide the logits by it), no vLLM
    importance weights, no entropy mask or bonus. Measured: ~7e-6 relative (left-padded prompts of
    5 lengths, fp32)."""
    trl_tool()
    model, tokenizer, problems, batch = trl_batch()
    per_row = [p for p in problems for _ in range(TRL_G)]
    s = progrs.score_completions(per_row, batch["texts"], ToyPRM(), 0, 1.0)
    adv, _, _ = compute_advantages(torch.tensor(s["correct"]).view(-1, TRL_G),
                                   torch.tensor(s["b"]).view(-1, TRL_G), "progrs", 1.0)
    adv = adv.flatten()
    params = list(model.parameters())

    args = types.SimpleNamespace(micro_batch=16, ppo_epochs=1, temperature=0.7, kl_coef=0.0,
                                 max_grad_norm=1e9)                 # no clipping: the raw gradient
    progrs.update_policy(model, torch.optim.SGD(params, lr=0.0), batch, adv, args,
                         contextlib.nullcontext)
    want = torch.cat([p.grad.flatten() for p in params])
    model.zero_grad(set_to_none=True)

    trainer = trl_trainer(model, tokenizer, problems, per_device_train_batch_size=len(adv),
                          loss_type="dapo", beta=0.0, num_iterations=1, temperature=0.7)
    trainer.current_gradient_accumulation_steps = 1   # set by Trainer.train(); one step here
    Tp = batch["prompt_len"]
    inputs = dict(prompt_ids=batch["input_ids"][:, :Tp],
                  prompt_mask=batch["attention_mask"][:, :Tp],
                  completion_ids=batch["input_ids"][:, Tp:],
                  completion_mask=batch["completion_mask"].long(), advantages=adv,
                  num_items_in_batch=batch["completion_mask"].sum())
    trainer.model.train()
    trainer.compute_loss(trainer.model, inputs).backward()
    got = torch.cat([p.grad.flatten() for p in params])
    model.zero_grad(set_to_none=True)
    model.eval()
    assert want.norm() > 0.1
    assert (got - want).norm() / want.norm() < 1e-4

def test_trl_two_processes_split_groups():
    """Two CPU processes (torchrun, gloo), 4 completions each, groups of 8: every group is split
    across the processes, and the advantages each process trains on are
    progrs.compute_advantages's on the gathered group (to 1e-6). Taking each process's half as a
    group would be far off."""
    pytest.importorskip("trl", reason=TRL_SKIP)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TINY_TASK / "trl_two_procs.py")]
    run = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    lines = [x for x in run.stdout.splitlines() if x.startswith("TRL_TWO_PROCS ")]
    assert run.returncode == 0 and lines, run.stdout[-2000:] + run.stderr[-3000:]
    r = json.loads(lines[-1].split(" ", 1)[1])
    assert r["world_size"] == 2 and r["steps"] == 2
    assert r["groups"] == 2 and r["split_groups"] == 2
    assert r["max_abs_diff"] <= 1e-6
    assert r["per_process_max_abs_diff"] > 0.1     # these groups tell global from per-process apart

def test_trl_trainer_shares_the_quantile_rule_and_reads_lam_var(monkeypatch):
    """ProgrsGRPOTrainer reads a PRM's quantile by progrs.quantile_index (the config's 0.5 for
    tiny_task/prm, not its lowest) and scores with its own lam_var."""
    from collections import defaultdict
    trainer = bare_trl_trainer(monkeypatch)
    learned = cpu_prm(PRM)
    assert trainer(prm=learned).q_index == learned.taus.index(0.5) == progrs.quantile_index(learned)
    assert trainer(prm=learned, prm_quantile=0.9).q_index == 2
    texts = ["1 + 1 = 2\n2 + 2 = 5\n5 + 1 = 6\nAnswer: 6", "1 + 1 = 2\n2 + 2 = 4\nAnswer: 4"]
    inputs = [{"question": "What is 1 + 1 + 2?", "gold": "4"}] * 2
    for lam_var in (0.0, 3.0):
        fake = types.SimpleNamespace(prm=ToyPRM(), q_index=1, lam_var=lam_var,
                                     model=types.SimpleNamespace(training=True),
                                     _metrics={"train": defaultdict(list)},
                                     accelerator=types.SimpleNamespace(device="cpu"))
        got = trainer._calculate_rewards(fake, inputs, None, texts, None)
        want = progrs.score_completions(inputs, texts, ToyPRM(), 1, lam_var)
        assert got[:, 1].tolist() == pytest.approx(want["b"])
    no_penalty = progrs.score_completions(inputs, texts, ToyPRM(), 1, 0.0)
    assert want["b"][0] < no_penalty["b"][0]                          # lam_var acts

def test_trl_trainer_warns_at_the_dominance_bound_of_its_mode_and_group(monkeypatch):
    trainer = bare_trl_trainer(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                # below every bound: silent
        trainer(prm=ToyPRM(), lam=1.0)
        trainer(prm=ToyPRM(), mode="outcome", lam=100.0)
    cases = (("progrs", 2.6, "2.58"), ("progrs-strict", 1.4, "1.33"), ("absolute", 1.0, "1.00"))
    for mode, lam, bound in cases:
        warned = f"lam {lam} >= {bound}, the bound for mode {mode} with G=8"
        with pytest.warns(UserWarning, match=warned):
            trainer(prm=ToyPRM(), mode=mode, lam=lam)

# The README: its copy of the centering function, its generated tables, its numbers

README = HERE / "README.md"

def test_readme_centering_function_is_progrs_own():
    import inspect
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    copies = [b for b in blocks if "def outcome_conditioned_centering" in b]
    assert len(copies) == 1, "the README holds one copy of the centering function"
    assert copies[0] == "import torch\n\n" + inspect.getsource(outcome_conditioned_centering)

def test_readme_map_and_flag_table_are_generated_from_progrs():
    proc = subprocess.run([sys.executable, str(TINY_TASK / "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

# The README's three groups (G = 8, lam 1): b from the toy PRM, 0.63 a sound step, 0.02 a false one
README_GROUPS = {"all wrong": ([False] * 8, [0.63] + [0.02] * 7, [0, 1]),
                 "all right": ([True] * 8, [0.63] * 6 + [0.13] * 2, [0, 6]),
                 "mixed": ([True] * 2 + [False] * 6, [0.63] * 5 + [0.02] * 3, [0, 2, 5])}

def readme_advantages(group, mode):
    ok, b, _ = README_GROUPS[group]
    return compute_advantages(torch.tensor([ok]), torch.tensor([b]), mode, 1.0)[0][0]

def test_readme_worked_groups_are_compute_advantages_own():
    """Every A the README's table prints is compute_advantages's, to 2 decimals."""
    readme = README.read_text()
    for name, (_, _, shown) in README_GROUPS.items():
        line = next(x for x in readme.splitlines() if x.startswith(f"| {name}"))
        cells = line.split("|")[3:7]                                # GRPO, absolute, progrs, strict
        for cell, mode in zip(cells, ("outcome", "absolute", "progrs", "progrs-strict")):
            adv = readme_advantages(name, mode)
            if adv.abs().max() > 1e-6:
                want = ", ".join(f"{adv[j]:+.2f}" for j in shown)
            else:
                want = "all 0"
            got = cell.replace("**", "").replace(" (offset)", "").strip()
            assert got == want, (name, mode, cell, want)
    assert len(readme.splitlines()) <= 250 and readme.count("](tiny_task/") >= 3
    plots = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", readme)
    assert plots == ["tiny_task/results_pace.png", "tiny_task/results_pace_passk.png"]
    assert all((HERE / x).is_file() for x in plots)

def test_readme_prose_numbers_about_advantages_are_recomputed():
    """The idea's prose: a mixed group's lift (right rollouts keep b: +2.36 against GRPO's +1.73),
    the dominance bounds at G = 8 (progrs 2.58, strict 1.33, progrs under a sample std 2.42); the
    metrics table's loss example (one 5-token right rollout, seven 10-token wrong ones, b = 0:
    -(1/N) sum_i A_i len_i, from policy_loss)."""
    readme = README.read_text()
    idea = readme.split("## The idea", 1)[1].split("\n## ", 1)[0]

    def found(pattern, text=idea):
        m = re.search(pattern, text)
        assert m, pattern
        return m.groups()
    lift, grpo = found(r"\(([+-]\d+\.\d\d) against GRPO's ([+-]\d+\.\d\d)\)")
    assert lift == f"{readme_advantages('mixed', 'progrs')[0]:+.2f}"
    assert grpo == f"{readme_advantages('mixed', 'outcome')[0]:+.2f}"
    assert found(r"progrs: [^.]*?(\d+\.\d\d) at G = 8")[0] == f"{max_dominant_lam(8):.2f}"
    strict = max_dominant_lam(8, "progrs-strict")
    assert found(r"progrs-strict: [^.]*?(\d+\.\d\d)")[0] == f"{strict:.2f}"
    # a sample std: A_out built by hand for every k of 8 right, the same widest c gap (n-1)/n
    bounds = []
    for k in range(1, 8):
        r = torch.tensor([1.0] * k + [0.0] * (8 - k), dtype=torch.float64)
        a_out = (r - r.mean()) / (r.std(correction=1) + progrs.ADV_EPS)
        n = 8 - k
        if n > 1:
            bounds.append(float(a_out[0] - a_out[-1]) / ((n - 1) / n))
    sample = min(bounds)
    assert sample == pytest.approx(max_dominant_lam(8) * math.sqrt(7 / 8), rel=1e-5)
    assert found(r"sample std[^.]*?(\d+\.\d\d) at G = 8")[0] == f"{sample:.2f}"
    # the logged loss at ratio 1: policy_loss on one 5-token right rollout and seven 10-token wrong
    ok = torch.tensor([[True] + [False] * 7])
    adv = compute_advantages(ok, torch.zeros(1, 8), "progrs", 1.0)[0].flatten()
    mask = torch.zeros(8, 10)
    mask[0, :5] = 1
    mask[1:] = 1
    logp = torch.full((8, 10), -1.0)
    loss, _ = progrs.policy_loss(logp, logp, adv, mask, mask.sum())
    assert float(loss) == pytest.approx(float(-(adv * mask.sum(1)).sum() / mask.sum()))
    example = r"one 5-token right rollout and seven 10-token wrong ones give ([+-]\d+\.\d\d)"
    assert found(example, readme)[0] == f"{float(loss):+.2f}"

# The repository

def test_no_tracked_file_names_a_machine_path():
    """Run folders are named relative to the repo (out/...) or as "the run folder"."""
    git = subprocess.run(["git", "ls-files"], cwd=HERE, capture_output=True, text=True)
    tracked = git.stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    paths = {str(p) + os.sep for p in (HERE, HERE.parent, Path.home()) if len(p.parts) > 1}
    for name in tracked:                                              # not "/"
        try:
            text = (HERE / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        found = [p for p in paths if p in text]
        assert not found, f"{name} names {found}"
