"""PROGRS against outcome-only GRPO, the absolute blend and three controls, in two regimes.

    python tiny_task/compare.py                     # both regimes: tiny_task/results.md + results_*.png
    python tiny_task/compare.py --regime sparse     # one regime alone: tiny_task/results_sparse.md
    python tiny_task/compare.py --regime sparse --seeds 9 --arms outcome,progrs,progrs+shuffle \
        --tag more_seeds                            # a follow-up, marked exploratory: results_more_seeds.md

The hypotheses, the fixed settings and how each verdict is computed stand in the head of
tiny_task/results.md, written before any run; this script keeps that head and rewrites what follows it.

Regimes (warm starts built by build_model.py):
    current   tiny_task/model         the default warm start: careful on half the problems
    sparse    tiny_task/model_sparse  a stronger hasty habit: about 10% of sampled rollouts are
                                      right and over 40% of the groups of 8 are all wrong (A_out = 0)
Arms, each with the rule PRM (--prm toy) and the learned PRM (--prm tiny_task/prm):
    outcome          plain GRPO (trains the same whatever the PRM, so it runs once, logging the
                     learned PRM's score)
    absolute         normalise r + lam * b within the group
    progrs           outcome-conditioned centering
    progrs+shuffle   progrs with b permuted within each group: the same offsets, no PRM information
    progrs+constant  progrs with b replaced by the step's mean b: the offset alone
    progrs-strict    b centred within each outcome class: the PRM only orders rollouts within a class

Every run is `python progrs.py` itself, one thread each, --jobs at a time (2 on a 2-core machine), so
a run's numbers depend only on its flags and seed. Runs land in out/compare/REGIME/ (--out moves them);
a finished run is reused if its flags match and stops the script if they do not (delete out/compare/
after changing a model or progrs.py: that, it cannot see). Before the runs, the script
measures each regime's starting point (sampled accuracy, all-wrong groups, what each PRM's score says
about success). The plots need matplotlib (optional: pip install matplotlib); without it they are skipped.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

REGIMES = {"current": HERE / "model", "sparse": HERE / "model_sparse"}
PRMS = {"rule": ["--prm", "toy"],
        # tau 0.5: at the default lowest tau (0.1) the learned PRM gives good steps 0.06-0.10 and the
        # sparse warm start's rollouts a mean b of 0.01, a bonus too small to test anything
        "learned": ["--prm", str(HERE / "prm"), "--prm-quantile", "0.5"]}
ARMS = {"outcome": ["--mode", "outcome"],
        "absolute": ["--mode", "absolute"],
        "progrs": ["--mode", "progrs"],
        "progrs+shuffle": ["--mode", "progrs", "--bonus-control", "shuffle"],
        "progrs+constant": ["--mode", "progrs", "--bonus-control", "constant"],
        "progrs-strict": ["--mode", "progrs-strict"]}
P, G = 16, 8                 # prompts per step, rollouts per prompt
B_BINS = (0.0, 0.05, 0.3, 0.6, 1.01)
HEAD_END = "<!-- compare.py writes everything below this line; the head above was written before the runs -->"


# ---- the runs ---------------------------------------------------------------------------------------

def run(out: Path, flags: list[str]) -> dict:
    """One progrs.py run (skipped if it finished before with the same flags); returns its metric
    lines and wall time."""
    done = out / "done.json"
    if done.exists():
        import progrs
        given = vars(progrs.build_parser().parse_args(flags))
        used = json.loads((out / "config.json").read_text())
        differ = [f"--{k.replace('_', '-')}" for k in given
                  if f"--{k.replace('_', '-')}" in flags and str(given[k]) != str(used[k])]
        if differ:
            sys.exit(f"compare.py: {out} was run with other {', '.join(differ)}; delete it or pass "
                     "another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(out / "log.txt", "w") as log:
            proc = subprocess.run([sys.executable, str(ROOT / "progrs.py"), "--out", str(out), *flags],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            last = (out / "log.txt").read_text().strip().splitlines()[-1:]
            sys.exit(f"compare.py: run {out} failed: {' '.join(last)}")
        done.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(rows=rows, wall_s=json.loads(done.read_text())["wall_s"])


def arm_runs(a) -> dict:
    """{(arm, prm, seed): flags}; outcome once per seed (its training ignores b)."""
    base = ["--steps", str(a.steps), "--prompts-per-step", str(P), "--group-size", str(G),
            "--eval-every", str(a.eval_every), "--eval-size", str(a.eval_size),
            "--eval-samples", str(a.eval_samples), "--lam", str(a.lam)]
    jobs = {}
    for s in range(a.seeds):
        jobs[("outcome", "learned", s)] = [*base, *ARMS["outcome"], *PRMS["learned"], "--seed", str(s)]
        for prm in a.prms:
            for arm in a.arms:
                if arm != "outcome":
                    jobs[(arm, prm, s)] = [*base, *ARMS[arm], *PRMS[prm], "--seed", str(s)]
    return jobs


def result(res: dict, arm: str, prm: str, seed: int) -> dict:
    return res[("outcome", "learned", seed) if arm == "outcome" else (arm, prm, seed)]


def curve(r: dict, key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in r["rows"] if "eval_accuracy" in e]


def mean_curve(runs: list[dict], key: str) -> list[tuple[int, float]]:
    cs = [curve(r, key) for r in runs]
    return [(pts[0][0], statistics.mean(y for _, y in pts)) for pts in zip(*cs)]


def rollouts_to(points: list[tuple[int, float]], target: float) -> float | None:
    """First crossing of target by a curve of (step, value), linear between evaluations, in rollouts."""
    for (s0, y0), (s1, y1) in zip(points, points[1:]):
        if y1 >= target:
            frac = 1.0 if y0 >= target else (target - y0) / (y1 - y0)
            return (s0 + frac * (s1 - s0)) * P * G
    return None


def paired(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences x - y."""
    d = [x - y for x, y in zip(xs, ys)]
    return statistics.mean(d), (statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf)


def beyond(m: float, se: float) -> bool:
    """More than 2 standard errors from zero: the pre-set bar for 'not noise' (loose at 3 seeds)."""
    return abs(m) > 2 * se


def pm(xs, fmt="{:.1f}", scale=1.0) -> str:
    xs = [x * scale for x in xs]
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(sd)}"


# ---- each regime's starting point -------------------------------------------------------------------

def regime_stats(model_dir: Path, problems: list[dict], seed: int = 0) -> dict:
    """G samples per problem from the warm start, judged, and scored by each PRM."""
    import torch
    from transformers.utils import logging as hf_logging
    import progrs

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    device, amp = torch.device("cpu"), progrs.contextlib.nullcontext
    model, tokenizer = progrs.load_model(str(model_dir), device)
    texts = []
    for i in range(0, len(problems), 32):
        prompts = [progrs.build_prompt(p["question"]) for p in problems[i:i + 32]]
        texts += progrs.generate(model, tokenizer, prompts, G, 64, 1.0, amp)["texts"]
    per_rollout = [p for p in problems for _ in range(G)]
    scored = {name: progrs.score_completions(per_rollout, texts, prm, prm.taus.index(q), 1.0)
              for name, prm, q in (("rule", progrs.ToyPRM(), 0.1),
                                   ("learned", progrs.ModelPRM(str(HERE / "prm"), device, amp), 0.5))}
    correct = [bool(c) for c in scored["rule"]["correct"]]       # the verifier: the same for both
    groups = [correct[i:i + G] for i in range(0, len(correct), G)]
    st = dict(right=statistics.mean(correct),
              all_wrong=statistics.mean(not any(g) for g in groups),
              all_right=statistics.mean(all(g) for g in groups), prm={})
    for name, b in ((name, x["b"]) for name, x in scored.items()):
        bins = []
        for lo, hi in zip(B_BINS, B_BINS[1:]):
            idx = [i for i, x in enumerate(b) if lo <= x < hi]
            bins.append((len(idx), statistics.mean(correct[i] for i in idx) if idx else None))
        # within mixed groups: P(b of a right rollout > b of a wrong one in the same group), ties 1/2
        wins = pairs = 0.0
        spread = []
        for g in range(len(groups)):
            bg, cg = b[g * G:(g + 1) * G], groups[g]
            right = [x for x, c in zip(bg, cg) if c]
            wrong = [x for x, c in zip(bg, cg) if not c]
            for x in right:
                for y in wrong:
                    wins += 1.0 if x > y else 0.5 if x == y else 0.0
                    pairs += 1
            if not right:
                spread.append(statistics.pstdev(wrong))
        st["prm"][name] = dict(bins=bins, auc=wins / pairs if pairs else None,
                               spread_all_wrong=statistics.mean(spread) if spread else None,
                               b_right=statistics.mean([x for x, c in zip(b, correct) if c] or [math.nan]),
                               b_wrong=statistics.mean([x for x, c in zip(b, correct) if not c] or [math.nan]))
    return st


def regime_table(stats: dict) -> list[str]:
    lines = ["| regime | sampled right | groups all wrong | groups all right | PRM | mean b right / wrong | "
             "P(b right > b wrong), same group | within-group std of b, all-wrong groups | "
             + " | ".join(f"right when b in [{lo:g}, {min(hi, 1):g}{')' if hi < 1 else ']'}"
                          for lo, hi in zip(B_BINS, B_BINS[1:])) + " |",
             "|" + " --- |" * (8 + len(B_BINS) - 1)]
    for regime, st in stats.items():
        for name, p in st["prm"].items():
            bins = " | ".join(f"{100 * r:.1f}% of {n}" if r is not None else f"- of {n}" for n, r in p["bins"])
            lines.append(f"| {regime} | {100 * st['right']:.1f}% | {100 * st['all_wrong']:.1f}% | "
                         f"{100 * st['all_right']:.1f}% | {name} | {p['b_right']:.3f} / {p['b_wrong']:.3f} | "
                         f"{p['auc']:.2f} | {p['spread_all_wrong']:.3f} | {bins} |")
    return lines


# ---- tables and verdicts ----------------------------------------------------------------------------

def regime_report(regime: str, res: dict, a) -> list[str]:
    seeds, budget = range(a.seeds), a.steps * P * G
    lines = [f"## Regime `{regime}` ({REGIMES[regime].relative_to(ROOT)})", ""]
    out = {}
    outcome = [result(res, "outcome", "learned", s) for s in seeds]
    target = mean_curve(outcome, "eval_sampled_accuracy")[-1][1]
    outcome_samp = [curve(o, "eval_sampled_accuracy") for o in outcome]
    base = [statistics.mean(y for _, y in c[1:]) for c in outcome_samp]
    lines += [f"Sampled pass@1 is the mean over {a.eval_samples} samples per problem at T = 1 on the "
              f"first {a.eval_size} test problems; greedy pass@1 on the same problems. Mean ± std over "
              f"{a.seeds} seeds. 'Gain' is the paired (same seed) difference from outcome-only in "
              f"sampled pass@1, averaged over the evaluations after step 0, mean ± standard error; "
              f"* marks a gain more than 2 standard errors from zero. "
              f"Outcome-only's final sampled pass@1 (mean over seeds): {100 * target:.1f}%.", "",
              "| PRM | arm | sampled pass@1 start | sampled pass@1 end | greedy end | gain over outcome "
              "(points) | rollouts to outcome's final | PRM score of eval samples, end | all-wrong "
              "groups / step | dominance violations / step | wall (s) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for prm in a.prms:
        for arm in a.arms:
            runs = [result(res, arm, prm, s) for s in seeds]
            samp = [curve(r, "eval_sampled_accuracy") for r in runs]
            gains = [statistics.mean(y for _, y in c[1:]) for c in samp]
            gain = paired(gains, base)
            reach = rollouts_to(mean_curve(runs, "eval_sampled_accuracy"), target)
            ends = [c[-1][1] for c in samp]
            ps = [curve(r, "eval_sampled_process_score")[-1][1] for r in runs]
            train = [[x for x in r["rows"] if "train_accuracy" in x] for r in runs]
            out[(arm, prm)] = dict(samp=samp, gain=gain, gains=gains, reach=reach, end=ends, ps_end=ps)
            g = "—" if arm == "outcome" else \
                f"{100 * gain[0]:+.1f} ± {100 * gain[1]:.1f}{' *' if beyond(*gain) else ''}"
            lines.append(
                f"| {prm if arm != 'outcome' else 'any'} | {arm} | "
                f"{pm([c[0][1] for c in samp], scale=100)} | {pm(ends, scale=100)} | "
                f"{pm([curve(r, 'eval_accuracy')[-1][1] for r in runs], scale=100)} | {g} | "
                f"{'not reached' if reach is None else f'{reach:.0f} ({reach / budget:.0%})'} | "
                f"{pm(ps, '{:.3f}') if arm != 'outcome' or prm == 'learned' else '—'} | "
                f"{pm([statistics.mean(x['groups_all_wrong'] for x in t) for t in train], '{:.2f}')} | "
                f"{pm([statistics.mean(x['dominance_violations'] for x in t) for t in train], '{:.2f}')} | "
                f"{pm([r['wall_s'] for r in runs], '{:.0f}')} |")
    lines += ["", "(The outcome row's PRM score is the learned PRM's; outcome-only trains the same under "
              "either PRM and runs once per seed.)", ""]
    steps = [s for s, _ in outcome_samp[0][1:]]
    lines += ["Gain over outcome-only at each evaluation (points of sampled pass@1, per-seed "
              "difference, mean ± standard error):", "",
              "| PRM | arm | " + " | ".join(f"step {s}" for s in steps) + " |",
              "| --- | --- |" + " --- |" * len(steps)]
    for prm in a.prms:
        for arm in a.arms[1:]:
            cells = []
            for i in range(1, len(steps) + 1):
                m, se = paired([c[i][1] for c in out[(arm, prm)]["samp"]], [c[i][1] for c in outcome_samp])
                cells.append(f"{100 * m:+.1f} ± {100 * se:.1f}")
            lines.append(f"| {prm} | {arm} | " + " | ".join(cells) + " |")
    by_step = [[x for x in o["rows"] if "train_accuracy" in x] for o in outcome]
    lines += ["", "Outcome-only, per training step (mean over seeds): all-wrong groups of "
              f"{P}: " + ", ".join(f"{statistics.mean(t[i]['groups_all_wrong'] for t in by_step):.1f}"
                                 for i in range(a.steps))
              + "; steps per answer: " + ", ".join(
                  f"{statistics.mean(t[i]['steps_per_answer'] for t in by_step):.2f}" for i in range(a.steps))
              + ".", ""]
    return lines + verdicts(regime, out, target, budget, a)


def verdicts(regime, out, target, budget, a) -> list[str]:
    lines = [f"### Hypotheses, regime `{regime}`", ""]

    def gain_txt(arm, prm):
        m, se = out[(arm, prm)]["gain"]
        return f"{100 * m:+.1f} ± {100 * se:.1f} points"

    have = lambda *arms: all(x in a.arms for x in arms)  # noqa: E731
    if regime == "sparse" and have("progrs"):
        for prm in a.prms:
            reach = out[("progrs", prm)]["reach"]
            ok = reach is not None and reach <= 0.75 * budget
            lines.append(f"- **H1 ({prm} PRM{', primary' if prm == 'rule' else ', secondary'}): "
                         f"{'supported' if ok else 'not supported'}.** progrs "
                         + (f"never reached outcome-only's final sampled pass@1 ({100 * target:.1f}%) "
                            f"within {budget} rollouts" if reach is None else
                            f"reached outcome-only's final sampled pass@1 ({100 * target:.1f}%) after "
                            f"{reach:.0f} of {budget} rollouts ({reach / budget:.0%})")
                         + f"; the bar is 75%. Gain over outcome: {gain_txt('progrs', prm)}.")
        for prm in a.prms if have("progrs+shuffle") else ():
            g, s = out[("progrs", prm)]["gain"], out[("progrs+shuffle", prm)]["gain"]
            if not beyond(*g):
                v = "not testable: progrs shows no gain beyond noise to explain"
            elif not beyond(*s):
                v = "supported: the gain vanishes into noise with b shuffled"
            else:
                v = "not supported: the shuffled control keeps a gain beyond noise"
            others = ", ".join(f"{x} {gain_txt(x, prm)}" for x in a.arms if x.startswith("progrs"))
            d = paired(out[("progrs", prm)]["gains"], out[("progrs+shuffle", prm)]["gains"])
            lines.append(f"- **H2 ({prm} PRM): {v}.** Gain over outcome: {others}. The direct contrast, "
                         f"progrs minus progrs+shuffle per seed (not part of the pre-set rule): "
                         f"{100 * d[0]:+.1f} ± {100 * d[1]:.1f} points"
                         f"{', beyond noise' if beyond(*d) else ', within noise'}.")
    if "learned" not in a.prms or not have("absolute", "progrs"):
        return lines + [""]
    ps_out = out[("outcome", "learned")]["ps_end"]
    acc_out = out[("outcome", "learned")]["end"]
    exploits, said = {}, []
    for arm in ("absolute", "progrs"):
        dps = paired(out[(arm, "learned")]["ps_end"], ps_out)
        dacc = paired(out[(arm, "learned")]["end"], acc_out)
        exploits[arm] = (dps[0] > 0 and beyond(*dps)) and (dacc[0] < 0 and beyond(*dacc))
        said.append(f"{arm}: PRM score {dps[0]:+.3f} ± {dps[1]:.3f}, sampled pass@1 "
                    f"{100 * dacc[0]:+.1f} ± {100 * dacc[1]:.1f} points")
    ok = exploits["absolute"] and not exploits["progrs"]
    lines.append(f"- **H3 (learned PRM, lam {a.lam}): {'supported' if ok else 'not supported'}.** At the "
                 f"end, paired differences from outcome-only: {'; '.join(said)}. "
                 f"Exploitation needs both a higher PRM score and a lower pass@1, each beyond 2 standard "
                 f"errors: absolute {'shows it' if exploits['absolute'] else 'does not'}, progrs "
                 f"{'shows it' if exploits['progrs'] else 'does not'}.")
    return lines + [""]


# ---- plots ------------------------------------------------------------------------------------------

def plot(regime: str, res: dict, a, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"compare.py: matplotlib is not installed; skipping {path.name} (pip install matplotlib)")
        return
    seeds = range(a.seeds)
    h3 = [x for x in ("outcome", "absolute", "progrs") if x in a.arms] if "learned" in a.prms else []
    h3 = h3 if "absolute" in h3 else []  # the H3 panel compares the absolute blend with the others
    n = len(a.prms) + bool(h3)
    fig, axes = plt.subplots(1, n, figsize=(5.3 * n, 4.5), squeeze=False)
    axes = axes[0]
    for ax, prm in zip(axes, a.prms):
        for arm in a.arms:
            runs = [result(res, arm, prm, s) for s in seeds]
            cs = [curve(r, "eval_sampled_accuracy") for r in runs]
            x = [s * P * G for s, _ in cs[0]]
            ys = [[100 * y for _, y in c] for c in cs]
            mean = [statistics.mean(v) for v in zip(*ys)]
            sd = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*ys)]
            ax.plot(x, mean, label=arm, ls="--" if "+" in arm or "strict" in arm else "-")
            ax.fill_between(x, [u - d for u, d in zip(mean, sd)], [u + d for u, d in zip(mean, sd)],
                            alpha=0.12)
        ax.set(xlabel="rollouts", ylabel="sampled pass@1 (%)", title=f"{regime}: {prm} PRM")
        ax.legend(fontsize=8)
    if h3:
        ax = axes[-1]
        for arm in h3:
            runs = [result(res, arm, "learned", s) for s in seeds]
            acc = mean_curve(runs, "eval_sampled_accuracy")
            ps = mean_curve(runs, "eval_sampled_process_score")
            ax.plot([y for _, y in ps], [100 * y for _, y in acc], marker="o", label=arm)
            ax.annotate(f"step {acc[-1][0]}", (ps[-1][1], 100 * acc[-1][1]), fontsize=7)
        ax.set(xlabel="learned PRM score of the eval samples (b)", ylabel="sampled pass@1 (%)",
               title=f"{regime}: H3, PRM score against pass@1")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


# ---- main -------------------------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--regime", default="both", choices=["both", *REGIMES], help="which warm start(s)")
    p.add_argument("--steps", type=int, default=12, help="policy updates per run")
    p.add_argument("--eval-every", type=int, default=3, help="steps between evaluations")
    p.add_argument("--eval-size", type=int, default=200, help="the first N test problems")
    p.add_argument("--eval-samples", type=int, default=4, help="samples per problem for sampled pass@1")
    p.add_argument("--lam", type=float, default=1.0, help="weight of the process bonus")
    p.add_argument("--seeds", type=int, default=3, help="N: seeds 0 .. N-1")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--out", default=str(ROOT / "out" / "compare"), help="where the runs go")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"comma-separated, some of {', '.join(ARMS)} (outcome always runs)")
    p.add_argument("--prms", default=",".join(PRMS), help="rule, learned or both")
    p.add_argument("--tag", default="", help="an exploratory follow-up: write results_TAG.md, marked "
                   "as added after the pre-registered results, instead of results.md")
    a = p.parse_args()
    a.arms = ["outcome", *[x for x in a.arms.split(",") if x != "outcome"]]
    a.prms = a.prms.split(",")
    for flag, xs, known in (("--arms", a.arms, ARMS), ("--prms", a.prms, PRMS)):
        if not set(xs) <= set(known):
            p.error(f"{flag}: unknown {sorted(set(xs) - set(known))}; expected some of {list(known)}")
    t0 = time.perf_counter()
    import progrs
    import torch

    regimes = list(REGIMES) if a.regime == "both" else [a.regime]
    problems = progrs.load_problems(HERE / "test.jsonl")[:a.eval_size]
    torch.set_num_threads(a.jobs)
    stats = {r: regime_stats(REGIMES[r], problems) for r in regimes}
    t_stats = time.perf_counter() - t0
    torch.set_num_threads(1)

    jobs = {(r, *k): v for r in regimes for k, v in arm_runs(a).items()}
    jobs = {k: ["--model", str(REGIMES[k[0]]), *v] for k, v in jobs.items()}
    order = sorted(jobs, key=lambda k: k[2] != "learned")  # the slower learned-PRM runs first
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {k: pool.submit(run, Path(a.out) / k[0] / f"{k[1]}-{k[2]}-seed{k[3]}",
                                  jobs[k]) for k in order}
        res = {k: f.result() for k, f in futures.items()}
    wall = time.perf_counter() - t0

    command = " ".join(["python tiny_task/compare.py", *sys.argv[1:]])
    stem = f"results_{a.tag}" if a.tag else "results"
    runs_at = Path(a.out).resolve()
    runs_at = runs_at.relative_to(ROOT) if runs_at.is_relative_to(ROOT) else runs_at
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    body = [] if a.tag else [HEAD_END, ""]
    body += ["# Results", "",
            f"Produced by `{command}` at commit {commit}: {len(res)} runs of {a.steps} steps x {P} "
            f"prompts x {G} rollouts ({sum(r['wall_s'] for r in res.values()) / 60:.1f} minutes of run "
            f"time, summed over the runs when each was made), {a.jobs} at a time; this invocation took "
            f"{wall / 60:.1f} minutes "
            f"({t_stats:.0f} s of it measuring the starting points). Per-run metrics and logs: "
            f"{runs_at}/.", "",
            "## Starting points", "",
            f"{len(problems)} test problems x {G} samples at T = 1 from each warm start, before any "
            "training. The rule PRM is read at tau 0.1, the learned one at tau 0.5, as in the runs.", "",
            *regime_table(stats), ""]
    for r in regimes:
        sub = {k[1:]: v for k, v in res.items() if k[0] == r}
        png = f"{stem}.png" if a.tag and len(regimes) == 1 else f"{stem}_{r}.png"
        body += regime_report(r, sub, a) + [f"![{r}]({png})", ""]
        plot(r, sub, a, HERE / png)
    if a.tag:
        path = HERE / f"{stem}.md"
        head = (f"# Exploratory: `{command}`\n\nAdded after the pre-registered results in "
                "tiny_task/results.md were seen; not part of the pre-registered tests. The verdict lines "
                "apply the pre-registered rules to these runs.\n\n")
    else:
        path = HERE / ("results.md" if a.regime == "both" else f"results_{a.regime}.md")
        head = (HERE / "results.md").read_text().split(HEAD_END)[0]
    path.write_text(head + "\n".join(body) + "\n")
    print("\n".join(body))
    print(f"wrote {path.relative_to(ROOT)} in {wall / 60:.1f} minutes")


if __name__ == "__main__":
    main()
