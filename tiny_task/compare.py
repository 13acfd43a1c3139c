"""Outcome-only GRPO vs the absolute blend vs PROGRS on the tiny task, side by side.

    python tiny_task/compare.py                 # writes tiny_task/results.md and results.png

Every run is `python progrs.py` itself (no second implementation), from the same tiny_task/model,
with the same rollout budget (--steps x --prompts-per-step x --group-size) and seeds 0, 1, 2 per mode;
then a lam sweep for `absolute` and `progrs` on seed 0. Two runs go at a time, one thread each, so
their numbers depend only on the seed. Runs land in out/compare/; a finished run is not rerun
(delete out/compare/ after changing the model or progrs.py).

    python tiny_task/compare.py --ops 4         # the same, on the 4-operation problems only

--ops N keeps only the problems with N operations, in training and in evaluation (the hardest
slice of the task when N = 4: the longest chains, where the PRM's step-level credit has the most to
add), skips the lam sweep, and writes tiny_task/results_ops4.md and results_ops4.png.
results.png needs matplotlib (optional, for this script only); without it the plot is skipped.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("outcome", "absolute", "progrs")
SWEEP_LAMS = (0.1, 0.5, 1.0, 2.0)


def run(out: Path, flags: list[str]) -> dict:
    """One progrs.py run (skipped if its metrics are complete); returns its records and wall time."""
    done = out / "done.json"
    if not done.exists():
        t0 = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, str(ROOT / "progrs.py"), "--out", str(out), *flags],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"compare.py: run {out} failed: {proc.stderr.strip().splitlines()[-1]}")
        done.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(rows=rows, wall_s=json.loads(done.read_text())["wall_s"])


def summarize(r: dict, rollouts_per_step: int, target: float | None) -> dict:
    evals = [x for x in r["rows"] if "eval_accuracy" in x]
    steps = [x for x in r["rows"] if "train_accuracy" in x]
    reached = next((e["step"] * rollouts_per_step for e in evals[1:]  # after training began
                    if target is not None and e["eval_accuracy"] >= target), None)
    return dict(acc_start=evals[0]["eval_accuracy"], acc_end=evals[-1]["eval_accuracy"],
                trace_err=evals[-1]["eval_trace_error_rate"],
                steps_per_answer=evals[-1]["eval_steps_per_answer"],
                violations=statistics.mean(s["dominance_violations"] for s in steps),
                all_wrong=statistics.mean(s["groups_all_wrong"] for s in steps),
                process=statistics.mean(s["process_score"] for s in steps),
                rollouts_to_target=reached, wall_s=r["wall_s"])


def subset(path: Path, n_ops: int, out: Path) -> Path:
    """The records of a tiny_task JSONL file whose question has n_ops operations, as a new file."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [x for x in path.read_text().splitlines()
             if sum(json.loads(x)["question"].count(op) for op in "+-") == n_ops]
    if not lines:
        sys.exit(f"compare.py: --ops {n_ops}: no problem in {path} has {n_ops} operations")
    (out / path.name).write_text("\n".join(lines) + "\n")
    return out / path.name


def pm(xs, fmt="{:.1f}", scale=1.0):
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "not reached"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(sd)}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=2,
                   help="greedy evals of the mode runs (the lam sweep evaluates every 20 steps)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--ops", type=int, default=0, help="only problems with this many operations")
    a = p.parse_args()
    P, G = 16, 8
    base = ["--steps", str(a.steps), "--prompts-per-step", str(P), "--group-size", str(G)]
    out, suffix, sweep = ROOT / "out" / "compare", "", SWEEP_LAMS
    if a.ops:
        out, suffix, sweep = ROOT / "out" / f"compare_ops{a.ops}", f"_ops{a.ops}", ()
        base += ["--data", str(subset(HERE / "train.jsonl", a.ops, out)),
                 "--eval-data", str(subset(HERE / "test.jsonl", a.ops, out))]
    # Greedy evaluation does not touch the random state, so how often a run evaluates does not
    # change its training: the sweep's lam = 1 runs are the mode runs of seed 0.
    jobs = {(m, lam, 0): [*base, "--eval-every", "20", "--mode", m, "--lam", str(lam), "--seed", "0"]
            for m in ("absolute", "progrs") for lam in sweep}
    jobs.update({(m, 1.0, s): [*base, "--eval-every", str(a.eval_every), "--mode", m, "--seed", str(s)]
                 for m in MODES for s in range(a.seeds)})
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {k: pool.submit(run, out / f"{k[0]}-lam{k[1]}-seed{k[2]}", v) for k, v in jobs.items()}
        res = {k: f.result() for k, f in futures.items()}

    per_step = P * G
    target = {s: summarize(res[("outcome", 1.0, s)], per_step, None)["acc_end"]
              for s in range(a.seeds)}
    where = f" ({a.ops}-operation problems only)" if a.ops else ""
    command = "python tiny_task/compare.py" + (f" --ops {a.ops}" if a.ops else "")
    lines = [f"# Outcome-only vs absolute blend vs PROGRS on tiny_task{where}",
             "",
             f"{a.steps} steps x {P} prompts x {G} rollouts = {a.steps * per_step} rollouts per run, "
             f"lam = 1.0, seeds 0..{a.seeds - 1}, mean ± std over seeds, defaults of progrs.py "
             f"otherwise. Produced by `{command}`: {len(res)} runs, "
             f"{sum(r['wall_s'] for r in res.values()) / 60:.1f} minutes of run time, "
             f"{a.jobs} at a time.",
             "",
             "| mode | greedy acc start (%) | greedy acc end (%) | rollouts to outcome-only's final acc | "
             "trace errors, test (% of right) | all-wrong groups / step | dominance violations / step | "
             "process score | steps / answer | wall (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in MODES:
        ss = [summarize(res[(m, 1.0, s)], per_step, target[s]) for s in range(a.seeds)]
        col = lambda k: [x[k] for x in ss]  # noqa: E731
        reached = col("rollouts_to_target")
        lines.append(f"| {m} | {pm(col('acc_start'), scale=100)} | {pm(col('acc_end'), scale=100)} | "
                     f"{pm(reached, '{:.0f}')} ({sum(r is not None for r in reached)}/{a.seeds} reached) | "
                     f"{pm(col('trace_err'), scale=100)} | {pm(col('all_wrong'), '{:.2f}')} | "
                     f"{pm(col('violations'), '{:.2f}')} | "
                     f"{pm(col('process'), '{:.3f}')} | {pm(col('steps_per_answer'), '{:.2f}')} | "
                     f"{pm(col('wall_s'), '{:.0f}')} |")
    if sweep:
        lines += ["", "## lam sweep (seed 0)", "",
                  "| mode | lam | greedy acc end (%) | trace errors (% of right) | violations / step | "
                  "process score | steps / answer |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in ("absolute", "progrs"):
        for lam in sweep:
            x = summarize(res[(m, lam, 0)], per_step, None)
            lines.append(f"| {m} | {lam} | {100 * x['acc_end']:.1f} | {100 * x['trace_err']:.1f} | "
                         f"{x['violations']:.2f} | {x['process']:.3f} | {x['steps_per_answer']:.2f} |")
    (HERE / f"results{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(res, a.seeds, per_step, HERE / f"results{suffix}.png")


def plot(res, seeds, per_step, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"compare.py: matplotlib is not installed; skipping {path.name} "
              "(pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in MODES:
        curves = [[e for e in res[(m, 1.0, s)]["rows"] if "eval_accuracy" in e] for s in range(seeds)]
        x = [e["step"] * per_step for e in curves[0]]
        for ax, key in zip(axes, ("eval_accuracy", "eval_trace_error_rate")):
            ys = [[100 * e[key] for e in c] for c in curves]
            mean = [statistics.mean(v) for v in zip(*ys)]
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*ys)]
            ax.plot(x, mean, label=m)
            ax.fill_between(x, [u - d for u, d in zip(mean, sd)], [u + d for u, d in zip(mean, sd)],
                            alpha=0.2)
    axes[0].set_ylabel("greedy test accuracy (%)")
    axes[1].set_ylabel("trace errors (% of right answers)")
    for ax in axes:
        ax.set_xlabel("rollouts")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
