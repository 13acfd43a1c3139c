"""progrs.py with an experiment control on the process score b or on where its bonus enters:
compare.py's `progrs+shuffle`, `progrs+constant` and group-type arms. The run is progrs.py's own; only
what the advantages see changes:

    --bonus-control shuffle:   b permuted within each group (the same values, so the same offsets,
                               but no link to the rollouts they belong to)
    --bonus-control constant:  every rollout gets the step's mean b (the offsets alone)
    --bonus-groups TYPES:      the centred bonus c kept only in groups of the listed types (comma-
                               separated: mixed, all-wrong, all-right) and set to 0 in the others,
                               A = A_out + lam * c; modes progrs and progrs-strict only

    python tiny_task/controls.py --bonus-control shuffle [progrs.py flags]
    python tiny_task/controls.py --bonus-groups all-wrong [progrs.py flags]     # progrs+allwrong
    python tiny_task/controls.py --bonus-groups mixed [progrs.py flags]         # progrs+mixed
    python tiny_task/controls.py --bonus-groups mixed,all-wrong [progrs.py flags]  # progrs+noright

A group's type comes from its outcomes: mixed (some right, some wrong), all-wrong, all-right.
The logged b (process_score, the teaching tables) stays the real one; the teaching tables show the
bonus the update used. The shuffle draws from its own generator seeded by --seed, except for the one
group scored before training, which draws from the global stream.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import progrs  # noqa: E402

CONTROLS = ("shuffle", "constant")
GROUP_TYPES = ("mixed", "all-wrong", "all-right")


def control_bonus(b: torch.Tensor, control: str, rng: torch.Generator | None = None) -> torch.Tensor:
    """(P, G) process scores -> the (P, G) scores the advantages see."""
    if control == "shuffle":
        return b.gather(-1, torch.rand(b.shape, generator=rng).argsort(-1))   # a permutation per group
    return torch.full_like(b, float(b.mean())) if control == "constant" else b


def group_types(correct: torch.Tensor) -> list[str]:
    """(P, G) outcomes -> each group's type."""
    n_right = correct.bool().sum(-1).tolist()                                  # (P,)
    G = correct.shape[-1]
    return ["all-wrong" if n == 0 else "all-right" if n == G else "mixed" for n in n_right]


def bonus_in_groups(bonus: torch.Tensor, correct: torch.Tensor, keep: tuple[str, ...]) -> torch.Tensor:
    """(P, G) centred bonus c -> c where the group's type is in keep, 0 elsewhere.

    >>> ok = torch.tensor([[True, False, False], [False] * 3, [True] * 3])
    >>> c = torch.tensor([[0.6, 0.1, -0.1], [0.2, -0.1, -0.1], [0.6, 0.5, 0.3]])
    >>> bonus_in_groups(c, ok, ("all-wrong",))
    tensor([[ 0.0000,  0.0000,  0.0000],
            [ 0.2000, -0.1000, -0.1000],
            [ 0.0000,  0.0000,  0.0000]])
    """
    kept = torch.tensor([t in keep for t in group_types(correct)]).unsqueeze(-1)  # (P, 1)
    return torch.where(kept, bonus, torch.zeros_like(bonus))                     # (P, G)


def split_control(argv: list[str]) -> tuple[dict, list[str]]:
    """({"control": ..., "groups": ...}, progrs.py's flags) from a command line that may hold
    --bonus-control CONTROL and --bonus-groups TYPES."""
    found, argv = {"control": None, "groups": None}, list(argv)
    for flag, key, known in (("--bonus-control", "control", CONTROLS),
                             ("--bonus-groups", "groups", GROUP_TYPES)):
        if flag not in argv:
            continue
        i = argv.index(flag)
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if not value or not set(value.split(",")) <= set(known):
            sys.exit(f"controls.py: error: {flag}: expected {'some' if key == 'groups' else 'one'} of "
                     f"{', '.join(known)}")
        found[key] = value if key == "control" else tuple(value.split(","))
        argv = argv[:i] + argv[i + 2:]
    return found, argv


def main(argv: list[str]) -> dict:
    found, argv = split_control(argv)
    args = progrs.build_parser().parse_args(argv)
    if found["groups"] and args.mode not in ("progrs", "progrs-strict"):
        sys.exit("controls.py: error: --bonus-groups needs --mode progrs or progrs-strict")
    rng, calls, compute = torch.Generator().manual_seed(args.seed), [], progrs.compute_advantages

    def controlled(correct, b, mode, lam):
        calls.append(None)
        if found["control"]:
            b = control_bonus(b, found["control"], rng if len(calls) > 1 else None)
        adv, a_out, bonus = compute(correct, b, mode, lam)
        if found["groups"]:
            bonus = bonus_in_groups(bonus, correct, found["groups"])
            adv = a_out + lam * bonus
        return adv, a_out, bonus

    progrs.compute_advantages = controlled   # rollout_step looks it up at each call
    return progrs.main(argv)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except progrs.ProgrsError as e:
        sys.exit(f"controls.py: error: {e}")
