"""The run folder, --out, for progrs.py: checkpoints written whole, a killed save cleaned up, a used
folder refused unless --resume, and what --resume reads back.

OUT/model holds the weights and tokenizer (from_pretrained loads it as it is), the step
(progrs_step.json) and progrs_state.pt, the `state` progrs.train saves (optimizer, schedule, random
streams, problem order, the gauge's pool, the metrics written so far). A checkpoint is written whole in
OUT/model.tmp, then swapped in by two renames; a save killed midway can leave model.tmp or model.old
behind, which prepare_out cleans up before any work.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from progrs import ProgrsError, first_line  # noqa: E402

CHECKPOINT_DIRS = ("model.tmp", "model", "model.old")  # being written, the checkpoint, the one replaced


def save_checkpoint(model, tokenizer, out_dir: Path, step: int, state: dict | None = None) -> None:
    tmp, final, old = (out_dir / d for d in CHECKPOINT_DIRS)
    for d in (tmp, old):
        shutil.rmtree(d, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if state is not None:
            torch.save(state, tmp / "progrs_state.pt")
        (tmp / "progrs_step.json").write_text(json.dumps({"step": step}))
    except OSError as e:  # a full disk: the last whole checkpoint stays where it is
        shutil.rmtree(tmp, ignore_errors=True)
        raise ProgrsError(f"--out {out_dir}: could not write the step {step} checkpoint "
                          f"({e.strerror or first_line(e)}); model/ still holds the last whole one") from None
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def prepare_out(out: str, resume: bool = False, log=print) -> None:
    """--out is writable and fresh (or, with --resume, holds a checkpoint); what an interrupted save
    left there is cleaned up."""
    if not out.strip(): raise ProgrsError("--out: expected a folder, got an empty name")
    out_dir = Path(out)
    tmp, final, old = (out_dir / d for d in CHECKPOINT_DIRS)
    used = [p.name for p in (out_dir / "metrics.jsonl", final, tmp, old) if p.exists()]
    if used and not resume:
        raise ProgrsError(f"--out {out}: holds a run ({', '.join(used)}); pass --resume to continue it, "
                          "or another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out_dir).close()  # a run never starts work it cannot save
    except OSError as e:
        raise ProgrsError(f"--out {out}: cannot write there ({e.strerror or first_line(e)})") from None
    if old.is_dir() and not final.exists():  # killed between the two renames: old is the last whole model
        old.rename(final)
        log(f"{out}: restored model/ from model.old/, left by an interrupted checkpoint save")
    for d in (tmp, old):
        if d.exists():
            shutil.rmtree(d)
            log(f"{out}: removed {d.name}/, left by an interrupted checkpoint save")
    if resume and not (final / "progrs_state.pt").is_file():
        raise ProgrsError(f"--resume: {out} holds no checkpoint to continue (model/progrs_state.pt)")


STATE_KEYS = ("step", "optimizer", "schedule", "order_rng", "queue", "right_pool", "metrics", "torch_rng",
              "cuda_rng")  # what progrs.train saves in progrs_state.pt


def resume_state(args) -> dict:
    """--resume: the run's own command (OUT/config.json; only --steps and --device may change) and its
    checkpoint's state."""
    config = Path(args.out) / "config.json"
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        raise ProgrsError(f"--resume: cannot read {config} ({getattr(e, 'strerror', None) or first_line(e)}); "
                          "it holds the run's flags, written when the run started") from None
    if not isinstance(saved, dict):
        raise ProgrsError(f"--resume: {config} holds no flags (expected a JSON object, as progrs.py writes)")
    for name, value in vars(args).items():
        if name not in ("resume", "steps", "device", "out") and value != saved.get(name):
            raise ProgrsError(f"--resume: --{name.replace('_', '-')} {value} differs from the run's "
                              f"{saved.get(name)} ({config}); rerun its command, or another --out")
    path = Path(args.out) / "model" / "progrs_state.pt"
    try:  # on the CPU first: --device may change, and load_state_dict moves the optimizer's tensors
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise ProgrsError(f"--resume: cannot read {path} ({first_line(e)}); the checkpoint is damaged") from None
    missing = [key for key in STATE_KEYS if key not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise ProgrsError(f"--resume: {path} lacks {', '.join(missing)} (expected the state progrs.py saves)")
    if state["step"] >= args.steps:
        raise ProgrsError(f"--resume: the run in {args.out} has done {state['step']} of its {args.steps} "
                          "steps; pass a larger --steps to go on")
    return state
