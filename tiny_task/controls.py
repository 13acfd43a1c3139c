"""progrs.py with an experiment control on the process score b: compare.py's `progrs+shuffle` and
`progrs+constant` arms. The run is progrs.py's own; only the b that the advantages see changes:

    shuffle:   b permuted within each group (the same values, so the same offsets, but no link to
               the rollouts they belong to)
    constant:  every rollout gets the step's mean b (the offsets alone)

    python tiny_task/controls.py --bonus-control shuffle [progrs.py flags]

The logged b (process_score, the teaching tables) stays the real one. The shuffle draws from its own
generator seeded by --seed, except for the one group scored before training, which draws from the
global stream.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import progrs  # noqa: E402

CONTROLS = ("shuffle", "constant")


def control_bonus(b: torch.Tensor, control: str, rng: torch.Generator | None = None) -> torch.Tensor:
    """(P, G) process scores -> the (P, G) scores the advantages see."""
    if control == "shuffle":
        return b.gather(-1, torch.rand(b.shape, generator=rng).argsort(-1))   # a permutation per group
    return torch.full_like(b, float(b.mean())) if control == "constant" else b


def split_control(argv: list[str]) -> tuple[str, list[str]]:
    """(control, progrs.py's flags) from a command line holding --bonus-control CONTROL."""
    i = argv.index("--bonus-control")
    if i + 1 >= len(argv) or argv[i + 1] not in CONTROLS:
        sys.exit(f"controls.py: error: --bonus-control: expected one of {', '.join(CONTROLS)}")
    return argv[i + 1], argv[:i] + argv[i + 2:]


def main(argv: list[str]) -> dict:
    control, argv = split_control(argv)
    seed = progrs.build_parser().parse_args(argv).seed
    rng, calls, compute = torch.Generator().manual_seed(seed), [], progrs.compute_advantages

    def controlled(correct, b, mode, lam):
        calls.append(None)
        return compute(correct, control_bonus(b, control, rng if len(calls) > 1 else None), mode, lam)

    progrs.compute_advantages = controlled   # rollout_step looks it up at each call
    return progrs.main(argv)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except progrs.ProgrsError as e:
        sys.exit(f"controls.py: error: {e}")
