"""
The tiny task with TRL and with progrs.py, on the same budget, side by side (CPU, a few minutes).

    pip install trl==1.16.0
    python tiny_task/trl_run.py            # 20 steps of 16 prompts x 8 rollouts each, lr 1e-4

Both runs start from tiny_task/model with the same seed, sampler settings (temperature 1, no top-k or
top-p), AdamW (lr 1e-4, no weight decay, 10 warmup steps as progrs.py ramps them), gradient clipping
at 1, one update per batch, PROGRS advantages (mode progrs, lam 1, the toy PRM at tau 0.1). Each is
measured with progrs.evaluate: greedy pass@1 on the 500 test problems before and after. Prompts are
drawn by each trainer's own sampler, so the two runs see different prompts in a different order.

Prints a table and writes OUT/trl_run.json: pass@1 before/after, s/step (wall time of the training
steps, evaluation excluded) and the share of a step spent on PROGRS scoring (verifier + PRM +
coherence: progrs.py's t_score; ProgrsGRPOTrainer's progrs/score_seconds).
"""
import argparse
import contextlib
import json
import os
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import progrs  # noqa: E402


def eval_args(a):
    """What progrs.evaluate reads from progrs.py's flags (the tiny defaults)."""
    return types.SimpleNamespace(eval_batch=256, chat=False, max_new_tokens=a.max_new_tokens,
                                 lam_var=1.0, eval_samples=0, temperature=1.0, seed=a.seed)


def run_progrs(a, out: Path) -> dict:
    argv = ["--steps", str(a.steps), "--prompts-per-step", str(a.prompts), "--group-size", str(a.group),
            "--lr", str(a.lr), "--warmup-steps", str(a.warmup), "--eval-every", str(a.steps),
            "--max-new-tokens", str(a.max_new_tokens), "--mode", a.mode, "--lam", str(a.lam),
            "--seed", str(a.seed), "--out", str(out), "--device", "cpu"]
    res = progrs.main(argv)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "t_update" in r]
    total = sum(r["t_generate"] + r["t_score"] + r["t_update"] for r in steps)
    return dict(before=res["before"]["eval_accuracy"], after=res["after"]["eval_accuracy"],
                s_per_step=total / len(steps), score_share=sum(r["t_score"] for r in steps) / total,
                train_accuracy_last5=sum(r["train_accuracy"] for r in steps[-5:]) / 5)


def run_trl(a, out: Path) -> dict:
    from trl import GRPOConfig
    from trl_progrs import ProgrsGRPOTrainer, progrs_dataset

    torch.manual_seed(a.seed)
    model, tokenizer = progrs.load_model(str(HERE / "model"), torch.device("cpu"))
    eval_set = progrs.load_problems(HERE / "test.jsonl")
    prm, amp = progrs.ToyPRM(), contextlib.nullcontext
    before = progrs.evaluate(model, tokenizer, eval_set, eval_args(a), prm, amp)["eval_accuracy"]
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, seed=a.seed, report_to=[], save_strategy="no",
        logging_steps=1, disable_tqdm=True, gradient_checkpointing=False,
        max_steps=a.steps, per_device_train_batch_size=a.prompts * a.group, num_generations=a.group,
        max_completion_length=a.max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        loss_type="dapo", beta=0.0, num_iterations=1, max_grad_norm=1.0)
    # progrs.py's optimizer and warmup exactly (HF's constant_with_warmup would start at lr 0)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / (a.warmup + 1)))
    trainer = ProgrsGRPOTrainer(
        model=model, processing_class=tokenizer, args=args, optimizers=(opt, sched),
        train_dataset=progrs_dataset(progrs.load_problems(HERE / "train.jsonl")),
        prm=prm, mode=a.mode, lam=a.lam)
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    logs = [r for r in trainer.state.log_history if "progrs/score_seconds" in r]
    model.eval()
    after = progrs.evaluate(model, tokenizer, eval_set, eval_args(a), prm, amp)["eval_accuracy"]
    return dict(before=before, after=after, s_per_step=total / a.steps,
                score_share=sum(r["progrs/score_seconds"] for r in logs) / total,
                train_accuracy_last5=sum(r["rewards/correct/mean"] for r in logs[-5:]) / 5)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=16, help="P: prompts per step")
    p.add_argument("--group", type=int, default=8, help="G: rollouts per prompt")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--mode", default="progrs")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/trl_run")
    p.add_argument("--only", choices=["progrs", "trl"], default=None, help="run one side only")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, fn in (("progrs.py", run_progrs), ("TRL + ProgrsGRPOTrainer", run_trl)):
        if a.only and not name.lower().startswith(a.only):
            continue
        load = os.getloadavg()[0]
        results[name] = dict(fn(a, out / name.split()[0].replace(".py", "")), load_at_start=load)
    (out / "trl_run.json").write_text(json.dumps(dict(config=vars(a), results=results), indent=2))
    print(f"\n{'trainer':<26}{'pass@1 before':>14}{'after':>8}{'s/step':>8}{'scoring':>9}")
    for name, r in results.items():
        print(f"{name:<26}{r['before']:>14.1%}{r['after']:>8.1%}{r['s_per_step']:>8.2f}"
              f"{r['score_share']:>9.1%}")


if __name__ == "__main__":
    main()
