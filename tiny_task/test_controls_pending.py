"""The group-type control (controls.py --bonus-groups), on a constructed batch. To be merged into
test_progrs.py."""
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import progrs  # noqa: E402
from tiny_task import controls  # noqa: E402

ORIGINAL = progrs.compute_advantages


def controlled(monkeypatch, flags):
    """The compute_advantages that controls.main(flags) hands to progrs.main (which is not run)."""
    monkeypatch.setattr(progrs, "compute_advantages", ORIGINAL)
    monkeypatch.setattr(progrs, "main", lambda argv: progrs.compute_advantages)
    return controls.main(flags)


def test_bonus_groups_zero_exactly_in_excluded_types_and_progrs_elsewhere(monkeypatch):
    # two groups of each type, G = 4; every group has a nonzero centred bonus somewhere
    correct = torch.tensor([[True, False, False, False], [False, True, True, False],
                            [False] * 4, [False] * 4, [True] * 4, [True] * 4])
    b = torch.tensor([[0.6, 0.6, 0.2, 0.1], [0.3, 0.5, 0.0, 0.9], [0.6, 0.2, 0.2, 0.2],
                      [0.0, 0.4, 0.1, 0.9], [0.6, 0.6, 0.3, 0.3], [0.1, 0.8, 0.5, 0.2]])
    kind = ["mixed", "mixed", "all-wrong", "all-wrong", "all-right", "all-right"]
    assert controls.group_types(correct) == kind
    lam = 1.5
    for mode in ("progrs", "progrs-strict"):
        ref_adv, ref_out, ref_bonus = ORIGINAL(correct, b, mode, lam)
        assert all((ref_bonus[g] != 0).any() for g in range(len(kind)))
        for n in (1, 2, 3):
            for keep in itertools.combinations(controls.GROUP_TYPES, n):
                compute = controlled(monkeypatch, ["--bonus-groups", ",".join(keep), "--mode", mode,
                                                   "--lam", str(lam)])
                adv, a_out, bonus = compute(correct, b, mode, lam)
                for g, t in enumerate(kind):
                    if t in keep:
                        assert torch.equal(bonus[g], ref_bonus[g]), (keep, t)
                        assert torch.equal(adv[g], ref_adv[g]), (keep, t)
                    else:
                        assert torch.equal(bonus[g], torch.zeros(4)), (keep, t)
                        assert torch.equal(adv[g], ref_out[g]), (keep, t)
                assert torch.equal(a_out, ref_out)


def test_bonus_groups_flags():
    found, rest = controls.split_control(["--mode", "progrs", "--bonus-groups", "mixed,all-wrong",
                                          "--seed", "3"])
    assert found == {"control": None, "groups": ("mixed", "all-wrong")}
    assert rest == ["--mode", "progrs", "--seed", "3"]
    for bad in (["--bonus-groups", "wrong"], ["--bonus-groups"], ["--bonus-control", "none"]):
        try:
            controls.split_control(bad)
        except SystemExit:
            continue
        raise AssertionError(bad)
