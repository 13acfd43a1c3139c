"""PROGRS against outcome-only GRPO, the absolute blend and three controls, in two regimes; and a
fluent-failure regime with its own comparison.

    python tiny_task/compare.py                     # both regimes: tiny_task/results.md + results_*.png
    python tiny_task/compare.py --regime sparse     # one regime alone: tiny_task/results_sparse.md
    python tiny_task/compare.py --regime sparse --seeds 9 --arms outcome,progrs,progrs+shuffle \
        --tag more_seeds                            # a follow-up, marked exploratory: results_more_seeds.md
    python tiny_task/compare.py --regime fluent     # the fluent-failure comparison: results_fluent.md
    python tiny_task/compare.py --regime scarce     # scarce, sparse, fluent with the group-type arms:
                                                    # results_scarce.md (settings in SCARCE_SET)
    python tiny_task/compare.py --regime pace       # scarce for 32 steps, eight arms, pass@k at the
                                                    # end: results_pace.md (tiny_task/pace.py)

The hypotheses, the fixed settings and how each verdict is computed stand in the head of
tiny_task/results.md, written before any run; this script keeps that head and rewrites what follows it.

Regimes (warm starts built by build_model.py):
    current   tiny_task/model         the default warm start: careful on half the problems
    sparse    tiny_task/model_sparse  a stronger hasty habit: about 10% of sampled rollouts are
                                      right and over 40% of the groups of 8 are all wrong (A_out = 0)
    fluent    tiny_task/model_fluent  careful solutions that stop one operation early (a fluent
                                      failure: true steps, wrong answer) beside right careful ones
                                      and hasty ones; its own comparison (--regime fluent: arms
                                      outcome, absolute, progrs at two lams, progrs-strict at one, the
                                      fluent-failure gauge tracked, settings in FLUENT_SET; outcome
                                      runs once per PRM, as the gauge ranks by b), never part of
                                      --regime both; head and results in results_fluent.md
Arms, each with the rule PRM (--prm toy) and the learned PRM (--prm tiny_task/prm):
    outcome          plain GRPO (trains the same whatever the PRM, so it runs once, logging the
                     learned PRM's score)
    absolute         normalise r + lam * b within the group
    progrs           outcome-conditioned centering
    progrs+shuffle   progrs with b permuted within each group: the same offsets, no PRM information
    progrs+constant  progrs with b replaced by the step's mean b: the offset alone
    progrs-strict    b centred within each outcome class: the PRM only orders rollouts within a class
    progrs+allwrong  progrs with the centred bonus kept only in all-wrong groups (controls.py
                     --bonus-groups); progrs+mixed: only in mixed groups; progrs+noright: everywhere
                     but all-right groups (the all-right offset removed). --regime scarce only.

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
sys.path.insert(0, str(HERE))

REGIMES = {"current": HERE / "model", "sparse": HERE / "model_sparse"}
FLUENT = HERE / "model_fluent"   # the fluent-failure regime: its own comparison (results_fluent.md)
SCARCE = HERE / "model_scarce"   # the scarce-outcome regime, on 5-6 operations: results_scarce.md
SCARCE_DATA = ["--data", str(HERE / "train_scarce.jsonl"), "--eval-data", str(HERE / "test_scarce.jsonl")]
PRMS = {"rule": ["--prm", "toy"],
        # tau 0.5: at the default lowest tau (0.1) the learned PRM gives good steps 0.06-0.10 and the
        # sparse warm start's rollouts a mean b of 0.01, a bonus too small to test anything
        "learned": ["--prm", str(HERE / "prm"), "--prm-quantile", "0.5"]}
ARMS = {"outcome": ["--mode", "outcome"],
        "absolute": ["--mode", "absolute"],
        "progrs": ["--mode", "progrs"],
        "progrs+shuffle": ["--mode", "progrs", "--bonus-control", "shuffle"],
        "progrs+constant": ["--mode", "progrs", "--bonus-control", "constant"],
        "progrs-strict": ["--mode", "progrs-strict"],
        # the group-type control (controls.py --bonus-groups): the centred bonus kept only in these
        "progrs+allwrong": ["--mode", "progrs", "--bonus-groups", "all-wrong"],
        "progrs+mixed": ["--mode", "progrs", "--bonus-groups", "mixed"],
        "progrs+noright": ["--mode", "progrs", "--bonus-groups", "mixed,all-wrong"]}
GROUP_ARMS = ["progrs+allwrong", "progrs+mixed", "progrs+noright"]
P, G = 16, 8                 # prompts per step, rollouts per prompt
# the fluent-failure comparison's fixed settings, registered in the head of results_fluent.md
FLUENT_SET = dict(steps=12, eval_every=3, eval_size=100, eval_samples=2, seeds=5, lams=(1.0, 2.0),
                  arms=["outcome", "absolute", "progrs", "progrs-strict"],
                  drop=[("progrs-strict", 2.0)])   # to fit 60 minutes on a shared 2-core machine


# the scarce comparison (--regime scarce): three regimes, rule PRM, lam 1; fixed settings registered in
# the head of results_scarce.md. Cut to fit 75 minutes on a shared 2-core machine: no progrs+noright or
# progrs-strict in scarce (no all-right groups there: progrs+noright would repeat progrs run for run),
# no progrs+noright in fluent (the offset is measured in sparse)
SCARCE_SET = dict(steps=8, eval_every=4, eval_size=100, eval_samples=2, seeds=5, prms="rule",
                  arms={"scarce": ["outcome", "absolute", "progrs", "progrs+allwrong", "progrs+mixed"],
                        "sparse": ["outcome", "progrs", *GROUP_ARMS],
                        "fluent": ["outcome", "progrs", "progrs+mixed", "progrs+allwrong"]})


def arms_at(a, lam) -> list[str]:
    """The fluent regime's arms at one lam (FLUENT_SET's drop removed)."""
    return [x for x in a.arms if (x, lam) not in FLUENT_SET["drop"]]
B_BINS = (0.0, 0.05, 0.3, 0.6, 1.01)
HEAD_END = "<!-- compare.py writes everything below this line; the head above was written before the runs -->"


# ---- the runs ---------------------------------------------------------------------------------------

def run(out: Path, flags: list[str]) -> dict:
    """One progrs.py run (skipped if it finished before with the same flags); returns its metric
    lines and wall time."""
    done, script = out / "done.json", [str(ROOT / "progrs.py")]
    if "--bonus-control" in flags or "--bonus-groups" in flags:  # the controls run through controls.py
        from controls import split_control
        found, flags = split_control(flags)
        script = [str(HERE / "controls.py")]
        if found["control"]:
            script += ["--bonus-control", found["control"]]
        if found["groups"]:
            script += ["--bonus-groups", ",".join(found["groups"])]
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
            proc = subprocess.run([sys.executable, *script, "--out", str(out), *flags],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            last = (out / "log.txt").read_text().strip().splitlines()[-1:]
            sys.exit(f"compare.py: run {out} failed: {' '.join(last)}")
        done.write_text(json.dumps({"wall_s": time.perf_counter() - t0}))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return dict(rows=rows, wall_s=json.loads(done.read_text())["wall_s"])


def base_flags(a) -> list[str]:
    return ["--steps", str(a.steps), "--prompts-per-step", str(P), "--group-size", str(G),
            "--eval-every", str(a.eval_every), "--eval-size", str(a.eval_size),
            "--eval-samples", str(a.eval_samples)]


def arm_runs(a) -> dict:
    """{(arm, prm, seed): flags}; outcome once per seed (its training ignores b)."""
    base = [*base_flags(a), "--lam", str(a.lam)]
    jobs = {}
    for s in range(a.seeds):
        jobs[("outcome", "learned", s)] = [*base, *ARMS["outcome"], *PRMS["learned"], "--seed", str(s)]
        for prm in a.prms:
            for arm in a.arms:
                if arm != "outcome":
                    jobs[(arm, prm, s)] = [*base, *ARMS[arm], *PRMS[prm], "--seed", str(s)]
    return jobs


def fluent_runs(a) -> dict:
    """{(arm, prm, lam, seed): flags}; outcome once per PRM (lam None): its training ignores b, but
    the fluent-failure gauge ranks by b, so each PRM needs its own outcome-only runs."""
    return {(arm, prm, lam, s): [*base_flags(a), "--lam", str(lam or 1.0), *ARMS[arm], *PRMS[prm],
                                 "--seed", str(s)]
            for s in range(a.seeds) for prm in a.prms for arm in a.arms
            for lam in ([None] if arm == "outcome" else [x for x in a.lams if arm in arms_at(a, x)])}


def run_all(jobs: dict, a) -> dict:
    """{key: (run folder, flags)} -> {key: run()}, --jobs at a time, the slower learned-PRM runs first
    (the fluent regime: seed by seed, so that whole seeds finish first on a slow machine)."""
    order = sorted(jobs, key=lambda k: (k[-1] if a.regime == "fluent" else 0, "learned" not in k))
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {k: pool.submit(run, *jobs[k]) for k in order}
        return {k: f.result() for k, f in futures.items()}


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
    st["sample"] = dict(problems=per_rollout, texts=texts, correct=correct, scored=scored)
    return st


def fluent_stats(st: dict, lams) -> dict:
    """The fluent-failure numbers of a starting point (regime_stats' sample): per PRM, the gauge
    (progrs.fluent_failures, its pool = the sample's right rollouts), mean b of fluent failures,
    right answers and rollouts that stop one operation early, and, in all-wrong groups, the fluent
    failures' share of the rollouts and of each mode's positive advantage (the first batch's H6)."""
    import torch
    import progrs
    from build_model import stopped_early

    sm, out = st["sample"], {}
    correct = torch.tensor(sm["correct"])
    early = [stopped_early(p["question"], t) for p, t in zip(sm["problems"], sm["texts"])]
    sound = [all(t and not f for t, f in map(progrs.check_equations, progrs.split_steps(x)))
             for x, e in zip(sm["texts"], early) if e]
    for name, sc in sm["scored"].items():
        b = torch.tensor(sc["b"])
        ff = progrs.fluent_failures(b, correct, torch.tensor(sc["judged"]), [])
        aw = (correct.view(-1, G).sum(-1, keepdim=True) == 0).expand(-1, G).flatten()
        push = {}
        for mode in ("absolute", "progrs", "progrs-strict"):
            for lam in lams:
                adv = progrs.compute_advantages(correct.view(-1, G), b.view(-1, G), mode, lam)[0].flatten()
                pos = torch.where(aw, adv.clamp(min=0), 0.0)
                push[(mode, lam)] = (float(pos[ff].sum() / pos.sum()) if pos.sum() > 0 else None,
                                     float(pos[ff & aw].mean()) if (ff & aw).any() else None)
        mean = lambda m: statistics.mean(b[m].tolist()) if m.any() else math.nan  # noqa: E731
        out[name] = dict(rate=float(ff.float().mean()), b_fluent=mean(ff), b_right=mean(correct),
                         b_early=mean(torch.tensor(early) & ~correct), early_flagged=float(
                             ff[torch.tensor(early)].float().mean()) if any(early) else math.nan,
                         share_in_all_wrong=float(ff[aw].float().mean()) if aw.any() else None,
                         push=push, ff=ff)
    return dict(early=statistics.mean(early), early_sound=statistics.mean(sound) if sound else math.nan,
                prm=out)


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


# ---- the fluent-failure regime ----------------------------------------------------------------------

def fres(res, arm, prm, lam, seed) -> dict:
    return res[(arm, prm, None if arm == "outcome" else lam, seed)]


def fcurve(r: dict, key: str) -> list[float]:
    return [math.nan if e.get(key) is None else e[key] for e in r["rows"] if "eval_accuracy" in e]


def fmean(xs) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.mean(xs) if xs else math.nan


def mse(xs) -> tuple[float, float]:
    """Mean and standard error over seeds of per-seed values, skipping undefined ones (NaN)."""
    xs = [x for x in xs if not math.isnan(x)]
    return paired(xs, [0.0] * len(xs)) if xs else (math.nan, math.nan)


def se_txt(xs, scale=100.0, fmt="{:.1f}", star=False) -> str:
    """mean ± standard error over seeds; * when more than 2 standard errors from zero; (n of N) when
    some seeds have no value."""
    m, se = mse(xs)
    n = sum(not math.isnan(x) for x in xs)
    return "-" if not n else (f"{fmt.format(scale * m)} ± {fmt.format(scale * se)}"
                              + (" *" if star and beyond(m, se) else "")
                              + (f" ({n} of {len(xs)})" if n < len(xs) else ""))


def fluent_report(st: dict, res: dict, a, jobs: dict) -> list[str]:
    seeds = range(a.seeds)
    fs = fluent_stats(st, a.lams)
    steps = [e["step"] for e in fres(res, "outcome", a.prms[0], None, 0)["rows"] if "eval_accuracy" in e]
    lines = [f"## Regime `fluent` ({FLUENT.relative_to(ROOT)})", "",
             "### Its starting point: fluent failures", "",
             f"The same sample as above. 'Stop one operation early': the completion is the right careful "
             f"solution without its last step, answered there ({100 * fs['early']:.1f}% of rollouts; the "
             f"rule PRM judges every step of {100 * fs['early_sound']:.1f}% of them a true equation). "
             f"'Fluent failure' is progrs.py's gauge, with the sample's right rollouts as its pool. "
             f"In all-wrong groups: the fluent failures' share of the rollouts, and of the positive "
             f"advantage each mode would give this sample (its first batch's H6, lam {a.lams[0]:g}), "
             f"with the mean positive advantage of a fluent failure there.", "",
             "| PRM | fluent-failure rate | stopped early: flagged fluent | mean b: right / fluent failure / "
             "stopped early (wrong) | groups all wrong | fluent share of all-wrong groups' rollouts | "
             + " | ".join(f"{m}: share of push, mean A of a fluent failure" for m in FLUENT_SET["arms"][1:])
             + " |", "|" + " --- |" * (6 + len(FLUENT_SET["arms"]) - 1)]
    for name, x in fs["prm"].items():
        push = [x["push"][(m, a.lams[0])] for m in FLUENT_SET["arms"][1:]]
        lines.append(f"| {name} | {100 * x['rate']:.1f}% | {100 * x['early_flagged']:.1f}% | "
                     f"{x['b_right']:.3f} / {x['b_fluent']:.3f} / {x['b_early']:.3f} | "
                     f"{100 * st['all_wrong']:.1f}% | {100 * (x['share_in_all_wrong'] or 0):.1f}% | "
                     + " | ".join(f"{'-' if sh is None else f'{100 * sh:.1f}%'}, {'-' if pa is None else f'{pa:+.2f}'}"
                                  for sh, pa in push)
                     + " |")
    # per-evaluation curves
    def rows_for(key, diff):
        out = []
        for prm in a.prms:
            for lam in a.lams:
                base = [fcurve(fres(res, "outcome", prm, None, s), key) for s in seeds]
                for arm in arms_at(a, lam)[diff:]:
                    cs = [fcurve(fres(res, arm, prm, lam, s), key) for s in seeds]
                    cells = [se_txt([c[i] - (b[i] if diff else 0.0) for c, b in zip(cs, base)], star=diff)
                             for i in range(len(steps))]
                    out.append(f"| {prm} | {lam:g} | {arm} | " + " | ".join(cells) + " |")
        return out
    head = "| PRM | lam | arm | " + " | ".join(f"step {t}" for t in steps) + " |"
    rule = "| --- | --- | --- |" + " --- |" * len(steps)
    lines += ["", "### Over training", "",
              f"Evaluations on the first {a.eval_size} test problems, {a.eval_samples} samples per problem "
              f"at T = 1; mean ± standard error over {a.seeds} seeds (points). Outcome-only's rows repeat "
              f"under each lam: the same runs (one per PRM; the gauge ranks by that PRM's b).", "",
              "Sampled pass@1:", "", head, rule, *rows_for("eval_sampled_accuracy", 0), "",
              "Sampled fluent-failure rate (eval_sampled_fluent_failure_rate):", "", head, rule,
              *rows_for("eval_sampled_fluent_failure_rate", 0), "",
              "Sampled fluent-failure rate minus outcome-only's, per seed (* beyond 2 standard errors):", "",
              head, rule, *rows_for("eval_sampled_fluent_failure_rate", 1), "",
              "Per training step, mean over steps then mean ± standard error over seeds: all-wrong groups "
              f"of {P}, the fluent-failure rate of the rollouts, all_wrong_push_to_fluent (H6: the share of "
              "the positive advantage in all-wrong groups that goes to fluent failures, over the steps "
              "where it is defined), dominance violations, and wall time per run.", "",
              "| PRM | lam | arm | all-wrong groups / step | training fluent-failure rate (%) | "
              "H6 push to fluent failures (%) | steps with H6 defined | dominance violations / step | "
              "wall (s) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    h6 = {}
    for prm in a.prms:
        for lam in a.lams:
            for arm in arms_at(a, lam):
                runs = [fres(res, arm, prm, lam, s) for s in seeds]
                tr = [[x for x in r["rows"] if "train_accuracy" in x] for r in runs]
                per = lambda k: [fmean(x[k] for x in t) for t in tr]  # noqa: E731
                h6[(arm, prm, lam)] = per("all_wrong_push_to_fluent")
                n_def = [sum(x["all_wrong_push_to_fluent"] is not None for x in t) for t in tr]
                lines.append(f"| {prm} | {lam:g} | {arm} | {se_txt(per('groups_all_wrong'), 1, '{:.2f}')} | "
                             f"{se_txt(per('fluent_failure_rate'))} | "
                             f"{se_txt(h6[(arm, prm, lam)])}"
                             f" | {statistics.mean(n_def):.1f} | {se_txt(per('dominance_violations'), 1, '{:.2f}')}"
                             f" | {se_txt([r['wall_s'] for r in runs], 1, '{:.0f}')} |")
    return lines + fluent_verdicts(res, a, fs, h6, steps) + teaching_groups(res, a, fs, st, jobs, h6)


def fluent_verdicts(res, a, fs, h6, steps) -> list[str]:
    seeds = range(a.seeds)
    lines = ["", "### Hypotheses, regime `fluent`", ""]

    def rise(arm, prm, lam):  # the evaluation (after step 0) with the largest mean paired difference
        d = [[x - y for x, y in zip(fcurve(fres(res, arm, prm, lam, s), "eval_sampled_fluent_failure_rate"),
                                    fcurve(fres(res, "outcome", prm, None, s),
                                           "eval_sampled_fluent_failure_rate"))] for s in seeds]
        best = max(range(1, len(steps)), key=lambda i: fmean(x[i] for x in d))
        return (steps[best], *mse([x[best] for x in d]))

    def end(arm, prm, lam):  # final sampled pass@1 minus outcome-only's, per seed
        return paired([fcurve(fres(res, arm, prm, lam, s), "eval_sampled_accuracy")[-1] for s in seeds],
                      [fcurve(fres(res, "outcome", prm, None, s), "eval_sampled_accuracy")[-1] for s in seeds])

    def noise(m, se):
        return f"{100 * m:+.1f} ± {100 * se:.1f} points, " + (
            ("higher" if m > 0 else "lower") + " beyond noise" if beyond(m, se) else "within noise")

    for prm in a.prms:
        for lam in a.lams:
            t_a, m_a, se_a = rise("absolute", prm, lam)
            h4 = m_a >= 0.05 and m_a > 2 * se_a
            lines.append(f"- **H4 ({prm} PRM, lam {lam:g}): {'supported' if h4 else 'not supported'}.** "
                         f"The absolute blend's largest excess of sampled fluent-failure rate over "
                         f"outcome-only: {100 * m_a:+.1f} ± {100 * se_a:.1f} points at step {t_a} (bar: at "
                         f"least +5.0 and beyond 2 standard errors). Its final sampled pass@1 against "
                         f"outcome-only's (own verdict): {noise(*end('absolute', prm, lam))}.")
            for arm in [x for x in ("progrs", "progrs-strict") if x in arms_at(a, lam)]:
                t_p, m_p, se_p = rise(arm, prm, lam)
                e = end(arm, prm, lam)
                keeps = not (e[0] < 0 and beyond(*e))
                if not h4:
                    v = "not testable (the absolute blend amplified nothing to contain)"
                else:
                    v = "supported" if m_p <= m_a / 3 and keeps else "not supported"
                lines.append(f"- **H5 ({arm}{'' if arm == 'progrs' else ', reported beside progrs'}, {prm} "
                             f"PRM, lam {lam:g}): {v}.** Its largest rise over outcome-only: "
                             f"{100 * m_p:+.1f} ± {100 * se_p:.1f} points at step {t_p}, against a third of "
                             f"absolute's, {100 * m_a / 3:+.1f}; "
                             f"{'within' if m_p <= m_a / 3 else 'above'} it. Final sampled pass@1 against "
                             f"outcome-only's: {noise(*e)}"
                             f"{'' if keeps else ' (fails the pass@1 part)'}.")
    for prm in a.prms:
        ref = fs["prm"][prm]["share_in_all_wrong"]
        for lam in a.lams:
            said = []
            for arm in arms_at(a, lam)[1:]:
                xs = h6[(arm, prm, lam)]
                said.append(f"{arm} " + ("never defined" if all(map(math.isnan, xs)) else se_txt(xs) + "%"))
            m, se = mse(h6[("progrs", prm, lam)])
            ok = ref is not None and m - ref > 2 * se
            lines.append(f"- **H6 ({prm} PRM, lam {lam:g}): {'supported' if ok else 'not supported'}.** "
                         f"Share of the positive advantage in all-wrong groups that went to fluent failures, "
                         f"mean over training steps, mean ± standard error over seeds: {'; '.join(said)} "
                         f"(outcome-only gives all-wrong groups none). Reference: fluent failures are "
                         f"{100 * (ref or 0):.1f}% of the rollouts in all-wrong groups at the starting "
                         f"point; progrs favours them if its share exceeds that by more than 2 standard "
                         f"errors.")
    return lines + [""]


def teaching_groups(res, a, fs, st, jobs, h6) -> list[str]:
    """A group where progrs contains a fluent failure (from the runs' logs: the first teaching table of a
    progrs run, lam and PRM in the listed order, with a right rollout above every fluent one), and one
    where it does not (from the starting point's sample: the all-wrong group in which a fluent failure
    gets the largest positive advantage under progrs at the first lam)."""
    import re
    import torch
    import progrs

    row = re.compile(r"^\s*(yes|no\*|no) .*?(-?\d+\.\d\d)\s+([+-]\d+\.\d\d)\s+([+-]\d+\.\d\d)\s+"
                     r"([+-]\d+\.\d\d)  ")
    lines, found = ["### Teaching groups", ""], None
    for lam in a.lams:
        for prm in a.prms:
            for s in range(a.seeds):
                folder = jobs[("progrs", prm, lam, s)][0]
                text = (folder / "log.txt").read_text().splitlines()
                for i, x in enumerate(text):
                    if found or not x.startswith("question:"):
                        continue
                    table = text[i:i + 2 + G + 1][:2 + G]
                    rows = [row.match(y) for y in table[2:]]
                    if not all(rows):
                        continue
                    yes = [float(m.group(5)) for m in rows if m.group(1) == "yes"]
                    flu = [float(m.group(5)) for m in rows if m.group(1) == "no*"]
                    if yes and flu and min(yes) > max(flu):
                        step = next((y for y in reversed(text[:i]) if y.startswith("step ")), "step 0:")
                        legend = text[i + 2 + G:i + 3 + G]
                        found = (folder, step.split(":")[0],
                                 "\n".join(table + [x for x in legend if x.startswith("no* =")]))
    if found:
        folder, step, table = found
        lines += [f"Contained: the first teaching table of a progrs run with a fluent failure (no*) and a "
                  f"right rollout, in which every right rollout's A is above every fluent one's. From "
                  f"`{folder}/log.txt`, the table logged at {step}:", "", "```", table.rstrip(), "```", ""]
    else:
        lines += ["Contained: no teaching table in the progrs runs' logs shows a fluent failure beside a "
                  "right rollout.", ""]
    sm, lam = st["sample"], a.lams[0]
    for prm in a.prms:
        sc, ff = sm["scored"][prm], fs["prm"][prm]["ff"].view(-1, G)
        correct, b = torch.tensor(sm["correct"]).view(-1, G), torch.tensor(sc["b"]).view(-1, G)
        adv, a_out, bonus = progrs.compute_advantages(correct, b, "progrs", lam)
        cand = [(float(adv[g][ff[g]].max()), g) for g in range(len(b))
                if not correct[g].any() and ff[g].any() and adv[g][ff[g]].max() == adv[g].max() > 0]
        if not cand:
            lines += [f"Not contained ({prm} PRM): no all-wrong group of the starting point's sample gives "
                      f"a fluent failure the largest positive advantage.", ""]
            continue
        g = max(cand)[1]
        sl = slice(g * G, (g + 1) * G)
        one = dict(correct=correct[g:g + 1], b_grid=b[g:g + 1], bonus=bonus[g:g + 1], a_out=a_out[g:g + 1],
                   adv=adv[g:g + 1], fluent=ff[g:g + 1], texts=sm["texts"][sl], step_scores=sc["step_scores"][sl])
        lines += [f"Not contained ({prm} PRM): the all-wrong group of the starting point's sample "
                  f"({len(cand)} such groups of {len(b)}) in which a fluent failure gets the largest positive "
                  f"advantage under progrs at lam {lam:g}, as its first update would see it (progrs.py's "
                  f"teaching view; the fluent marks use the sample's right rollouts as the pool):", "",
                  "```", progrs.teaching_view(one, [sm["problems"][g * G]]), "```", ""]
    return lines


def fluent_plot(res: dict, a, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"compare.py: matplotlib is not installed; skipping {path.name} (pip install matplotlib)")
        return
    cells = [(prm, lam) for prm in a.prms for lam in a.lams]
    fig, axes = plt.subplots(2, len(cells), figsize=(4.6 * len(cells), 8), squeeze=False)
    for col, (prm, lam) in enumerate(cells):
        for row, (key, label) in enumerate((("eval_sampled_fluent_failure_rate", "fluent-failure rate"),
                                            ("eval_sampled_accuracy", "pass@1"))):
            ax = axes[row][col]
            for arm in arms_at(a, lam):
                runs = [fres(res, arm, prm, lam, s) for s in range(a.seeds)]
                x = [e["step"] * P * G for e in runs[0]["rows"] if "eval_accuracy" in e]
                ys = [[100 * y for y in fcurve(r, key)] for r in runs]
                mean = [fmean(v) for v in zip(*ys)]
                se = [mse(v)[1] for v in zip(*ys)]
                ax.plot(x, mean, marker="o", ms=3, label=arm, ls="--" if "strict" in arm else "-")
                ax.fill_between(x, [u - d for u, d in zip(mean, se)], [u + d for u, d in zip(mean, se)],
                                alpha=0.12)
            ax.set(xlabel="rollouts", ylabel=f"sampled {label} (%)", title=f"{prm} PRM, lam {lam:g}")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


# ---- the scarce comparison: where process credit pays, by group type (--regime scarce) -------------

def scarce_runs(a) -> dict:
    """{(regime, arm, seed): (run folder, flags)}: rule PRM, lam 1, SCARCE_SET's arms per regime."""
    jobs = {}
    for r, arms in SCARCE_SET["arms"].items():
        model = {"scarce": SCARCE, "sparse": REGIMES["sparse"], "fluent": FLUENT}[r]
        data = SCARCE_DATA if r == "scarce" else []
        for arm in arms:
            for s in range(a.seeds):
                jobs[(r, arm, s)] = (Path(a.out) / "scarce_comparison" / r / f"{arm}-rule-seed{s}",
                                     ["--model", str(model), *data, *base_flags(a), "--lam", str(a.lam),
                                      *ARMS[arm], *PRMS["rule"], "--seed", str(s)])
    return jobs


def sound_steps(text: str) -> tuple[int, bool]:
    """(judged true steps before the first false one, whether a false step occurs)."""
    import progrs
    k = 0
    for true, false in map(progrs.check_equations, progrs.split_steps(text)):
        if false:
            return k, True
        k += bool(true)
    return k, False


def sound_steps_table(st: dict) -> list[str]:
    """Mean b (rule PRM) against the number of sound steps before the first false step."""
    sm = st["sample"]
    rows = {}
    for text, ok, b in zip(sm["texts"], sm["correct"], sm["scored"]["rule"]["b"]):
        k, slipped = sound_steps(text)
        rows.setdefault(k, []).append((ok, b, slipped))
    lines = ["| sound steps before the first false step | rollouts | with a false step | right | mean b | "
             "mean b, those with a false step | mean b, those without |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for k in sorted(rows):
        xs = rows[k]
        slip = [b for _, b, f in xs if f]
        clean = [b for _, b, f in xs if not f]
        lines.append(f"| {k} | {len(xs)} | {len(slip)} | {sum(o for o, _, _ in xs)} | "
                     f"{statistics.mean(b for _, b, _ in xs):.3f} | "
                     f"{f'{statistics.mean(slip):.3f}' if slip else '-'} | "
                     f"{f'{statistics.mean(clean):.3f}' if clean else '-'} |")
    return lines


def group_examples(stats: dict, lam: float) -> list[str]:
    """One group of each type from the starting points' samples, with the advantage each arm gives."""
    import torch
    import progrs
    from controls import bonus_in_groups, group_types

    lines, want = [], ["all-wrong", "mixed", "all-right"]
    for kind in want:
        found = None
        for regime, st in stats.items():
            sm = st["sample"]
            correct = torch.tensor(sm["correct"]).view(-1, G)
            b = torch.tensor(sm["scored"]["rule"]["b"]).view(-1, G)
            idx = [g for g, t in enumerate(group_types(correct)) if t == kind]
            if not idx:
                continue
            if kind == "mixed":   # the most mixed group, as progrs.py's teaching view picks
                g = max(idx, key=lambda i: int(correct[i].sum()) * (G - int(correct[i].sum())))
            else:                 # the widest spread of b
                g = max(idx, key=lambda i: float(b[i].std()))
            found = (regime, g, correct[g:g + 1], b[g:g + 1], sm)
            break
        if not found:
            lines += [f"No {kind} group in the starting points' samples.", ""]
            continue
        regime, g, ok, bg = found[:4]
        sm = found[4]
        adv, a_out, c = progrs.compute_advantages(ok, bg, "progrs", lam)
        absolute = progrs.compute_advantages(ok, bg, "absolute", lam)[0]
        arms = {"progrs+allwrong": ("all-wrong",), "progrs+mixed": ("mixed",),
                "progrs+noright": ("mixed", "all-wrong")}
        per_arm = {k: a_out + lam * bonus_in_groups(c, ok, v) for k, v in arms.items()}
        q = sm["problems"][g * G]
        lines += [f"{kind.capitalize()} group (regime `{regime}`, starting point's sample): {q['question']}  "
                  f"gold: {q['gold']}", "", "```",
                  f"{'ok':>3} {'b':>5} {'c':>6} {'A_out':>6} {'progrs':>7} {'+allwrong':>9} {'+mixed':>7} "
                  f"{'+noright':>8} {'absolute':>8}  completion"]
        for j in range(G):
            text = sm["texts"][g * G + j].strip().replace("\n", " | ")
            text = text if len(text) <= 60 else text[:57] + "..."
            lines.append(f"{'yes' if ok[0, j] else 'no':>3} {bg[0, j]:5.2f} {c[0, j]:+6.2f} {a_out[0, j]:+6.2f} "
                         f"{adv[0, j]:+7.2f} {per_arm['progrs+allwrong'][0, j]:+9.2f} "
                         f"{per_arm['progrs+mixed'][0, j]:+7.2f} {per_arm['progrs+noright'][0, j]:+8.2f} "
                         f"{absolute[0, j]:+8.2f}  {text}")
        lines += ["```", ""]
    return lines


def scarce_report(stats: dict, res: dict, a) -> list[str]:
    seeds = range(a.seeds)
    budget = a.steps * P * G

    def runs(r, arm):
        return [res[(r, arm, s)] for s in seeds]

    def evals(run, key):
        return fcurve(run, key)

    steps = [e["step"] for e in res[("scarce", "outcome", 0)]["rows"] if "eval_accuracy" in e]
    gains, rises, finals = {}, {}, {}
    lines = ["## Over training", "",
             f"Sampled pass@1: {a.eval_samples} samples per problem at T = 1 on the first {a.eval_size} test "
             f"problems of the regime's test file; mean ± standard error over {a.seeds} seeds (points). "
             f"'Gain': the paired (same seed) difference from outcome-only in sampled pass@1, averaged over "
             f"the evaluations after step 0. 'Largest fluent rise': the evaluation after step 0 with the "
             f"largest mean paired excess of the sampled fluent-failure rate over outcome-only's. "
             f"* marks more than 2 standard errors from zero. Budget: {budget} rollouts per run.", ""]
    for r, arms in SCARCE_SET["arms"].items():
        base = [evals(x, "eval_sampled_accuracy") for x in runs(r, "outcome")]
        base_ff = [evals(x, "eval_sampled_fluent_failure_rate") for x in runs(r, "outcome")]
        target = statistics.mean(c[-1] for c in base)
        lines += [f"### Regime `{r}`", "",
                  "| arm | sampled pass@1 start | end | gain over outcome | rollouts to outcome's final "
                  f"({100 * target:.1f}%) | largest fluent rise (step) | all-wrong groups / step | "
                  "all-right groups / step | dominance violations / step | wall (s) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for arm in arms:
            rs = runs(r, arm)
            acc = [evals(x, "eval_sampled_accuracy") for x in rs]
            ff = [evals(x, "eval_sampled_fluent_failure_rate") for x in rs]
            g = [statistics.mean(x - y for x, y in zip(c[1:], b[1:])) for c, b in zip(acc, base)]
            d = [[x - y for x, y in zip(c, b)] for c, b in zip(ff, base_ff)]
            best = max(range(1, len(steps)), key=lambda i: fmean(x[i] for x in d))
            gains[(r, arm)], finals[(r, arm)] = g, [c[-1] for c in acc]
            rises[(r, arm)] = (steps[best], [x[best] for x in d])
            mean_acc = [(t, statistics.mean(v)) for t, v in zip(steps, zip(*acc))]
            reach = rollouts_to(mean_acc, target)
            tr = [[x for x in run["rows"] if "train_accuracy" in x] for run in rs]
            per = lambda k: [statistics.mean(x[k] for x in t) for t in tr]  # noqa: E731
            lines.append(
                f"| {arm} | {se_txt([c[0] for c in acc])} | {se_txt([c[-1] for c in acc])} | "
                f"{'—' if arm == 'outcome' else se_txt(g, star=True)} | "
                f"{'not reached' if reach is None else f'{reach:.0f} ({reach / budget:.0%})'} | "
                f"{'—' if arm == 'outcome' else se_txt(rises[(r, arm)][1], star=True) + f' ({steps[best]})'} | "
                f"{se_txt(per('groups_all_wrong'), 1, '{:.2f}')} | {se_txt(per('groups_all_correct'), 1, '{:.2f}')} | "
                f"{se_txt(per('dominance_violations'), 1, '{:.2f}')} | {se_txt([x['wall_s'] for x in rs], 1, '{:.0f}')} |")
        lines += ["", "Sampled pass@1 at each evaluation (%, mean ± standard error):", "",
                  "| arm | " + " | ".join(f"step {t}" for t in steps) + " |", "| --- |" + " --- |" * len(steps)]
        for arm in arms:
            acc = [evals(x, "eval_sampled_accuracy") for x in runs(r, arm)]
            lines.append(f"| {arm} | " + " | ".join(se_txt(list(v)) for v in zip(*acc)) + " |")
        lines.append("")
    return lines + scarce_verdicts(gains, rises, finals, res, a, steps)


def txt(m: float, se: float) -> str:
    return f"{100 * m:+.1f} ± {100 * se:.1f} points"


def fragile(margin: float, se: float) -> str:
    return " Fragile: it passes by less than 2 standard errors of its margin." if margin < 2 * se else ""


def h1_verdict(name: str, outcome_finals: list[float], curves: list[list[float]], steps: list[int],
               budget: int) -> str:
    """H1: progrs's mean sampled pass@1 curve (curves: per seed, at steps) reaches outcome-only's mean
    final within 75% of the budget's rollouts; fragile if moving the target by one standard error
    changes the verdict."""
    t, t_se = mse(outcome_finals)
    mean_acc = list(zip(steps, [statistics.mean(v) for v in zip(*curves)]))
    reach = {k: rollouts_to(mean_acc, t + k * t_se) for k in (-1, 0, 1)}
    verdict = {k: v is not None and v <= 0.75 * budget for k, v in reach.items()}
    desc = lambda v: "never" if v is None else f"after {v:.0f} rollouts ({v / budget:.0%})"  # noqa: E731
    return (f"- **{name}: {'supported' if verdict[0] else 'not supported'}.** progrs's mean curve "
            f"reaches outcome-only's final sampled pass@1 ({100 * t:.1f} ± {100 * t_se:.1f}%) "
            f"{desc(reach[0])}; the bar is 75% of {budget}. Against the target ± one standard error: "
            f"{desc(reach[-1])} / {desc(reach[1])}."
            + (" Fragile: the verdict changes within one standard error of the target."
               if len(set(verdict.values())) > 1 else ""))


def scarce_verdicts(gains, rises, finals, res, a, steps) -> list[str]:
    seeds, budget = range(a.seeds), a.steps * P * G
    lines = ["## Hypotheses", ""]
    # H7
    (g_sc, se_sc), (g_sp, se_sp) = mse(gains[("scarce", "progrs")]), mse(gains[("sparse", "progrs")])
    ok = g_sc >= 0.03 and g_sc >= 2 * g_sp
    m1, m2 = g_sc - 0.03, g_sc - 2 * g_sp
    se2 = math.sqrt(se_sc ** 2 + 4 * se_sp ** 2)
    lines.append(f"- **H7: {'supported' if ok else 'not supported'}.** progrs's gain over outcome-only: "
                 f"scarce {txt(g_sc, se_sc)}, sparse {txt(g_sp, se_sp)}. Bars: scarce at least +3.0 (margin "
                 f"{txt(m1, se_sc)}) and at least twice sparse's (margin {txt(m2, se2)})."
                 + (fragile(min(m1 / se_sc if se_sc else math.inf, m2 / se2 if se2 else math.inf), 1.0) if ok else ""))
    acc = [fcurve(res[("scarce", "progrs", s)], "eval_sampled_accuracy") for s in seeds]
    lines.append(h1_verdict("H1 in scarce", finals[("scarce", "outcome")], acc, steps, budget))
    # H8
    for r in ("scarce", "sparse"):
        gp, gw = gains[(r, "progrs")], gains[(r, "progrs+allwrong")]
        (mp, sep), (mw, sew) = mse(gp), mse(gw)
        margin, se_m = mse([w - 2 / 3 * p for w, p in zip(gw, gp)])
        if mp <= 0:
            v = "not testable (progrs shows no gain to keep)"
        else:
            v = "supported" if mw >= 2 / 3 * mp else "not supported"
        lines.append(f"- **H8 ({r}): {v}.** Gain over outcome-only: progrs {txt(mp, sep)}, progrs+allwrong "
                     f"{txt(mw, sew)}" + (f" ({mw / mp:.0%} of progrs's)" if mp > 0 else "")
                     + f"; per-seed margin over two thirds of progrs's: {txt(margin, se_m)}."
                     + (" progrs's own gain is within noise." if mp > 0 and not beyond(mp, sep) else "")
                     + (fragile(margin, se_m) if v == "supported" else ""))
    # H9
    t_p, xs_p = rises[("fluent", "progrs")]
    t_m, xs_m = rises[("fluent", "progrs+mixed")]
    (rp, sep), (rm, sem) = mse(xs_p), mse(xs_m)
    se_margin = math.sqrt(sep ** 2 / 9 + sem ** 2)
    if rp <= 0:
        v = "not testable (progrs raised no fluent failures over outcome-only)"
    else:
        v = "supported" if rm <= rp / 3 else "not supported"
    others = "; ".join(f"{arm} {txt(*mse(rises[('fluent', arm)][1]))} (step {rises[('fluent', arm)][0]})"
                       for arm in SCARCE_SET["arms"]["fluent"][1:])
    lines.append(f"- **H9 (fluent): {v}.** Largest rise of the sampled fluent-failure rate over outcome-only: "
                 f"progrs {txt(rp, sep)} at step {t_p}, progrs+mixed {txt(rm, sem)} at step {t_m}; the bar is a "
                 f"third of progrs's, {100 * rp / 3:+.1f} (margin {txt(rp / 3 - rm, se_margin)})."
                 + (" progrs's own rise is within noise." if rp > 0 and not beyond(rp, sep) else "")
                 + (fragile(rp / 3 - rm, se_margin) if v == "supported" else "")
                 + f" All arms: {others}.")
    # the all-right offset
    for r, arms in SCARCE_SET["arms"].items():
        said = [f"progrs minus {x} {txt(*mse([p - q for p, q in zip(gains[(r, 'progrs')], gains[(r, x)])]))}"
                for x in ("progrs+noright", "progrs-strict") if x in arms]
        n_right = [statistics.mean(x["groups_all_correct"] for x in res[(r, "progrs", s)]["rows"]
                                   if "train_accuracy" in x) for s in seeds]
        lines.append(f"- **The all-right offset ({r}):** "
                     + (f"gain difference, per seed: {'; '.join(said)}. " if said else
                        "no arm without the offset ran in this regime. ")
                     + f"progrs's runs had {statistics.mean(n_right):.2f} all-right groups of {P} per step.")
    return lines + [""]


def scarce_plot(res: dict, a, regime: str, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"compare.py: matplotlib is not installed; skipping {path.name} (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, (key, label) in zip(axes, (("eval_sampled_accuracy", "pass@1"),
                                       ("eval_sampled_fluent_failure_rate", "fluent-failure rate"))):
        for arm in SCARCE_SET["arms"][regime]:
            rs = [res[(regime, arm, s)] for s in range(a.seeds)]
            x = [e["step"] * P * G for e in rs[0]["rows"] if "eval_accuracy" in e]
            ys = [[100 * y for y in fcurve(r, key)] for r in rs]
            mean = [fmean(v) for v in zip(*ys)]
            se = [mse(list(v))[1] for v in zip(*ys)]
            ax.plot(x, mean, marker="o", ms=3, label=arm, ls="--" if "+" in arm or "strict" in arm else "-")
            ax.fill_between(x, [u - d for u, d in zip(mean, se)], [u + d for u, d in zip(mean, se)], alpha=0.1)
        ax.set(xlabel="rollouts", ylabel=f"sampled {label} (%)", title=f"{regime}: rule PRM, lam {a.lam:g}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


def scarce_main(a):
    """--regime scarce: starting points, the runs (seed by seed), tables, verdicts, plots."""
    import progrs
    import torch

    t0 = time.perf_counter()
    jobs = scarce_runs(a)
    n_problems = 200
    if a.report_only:  # the seeds whose runs all finished; a small sample for the group examples
        done = [s for s in range(a.seeds) if all((v[0] / "done.json").exists()
                                                  for k, v in jobs.items() if k[2] == s)]
        a.seeds = next((i for i in range(a.seeds) if i not in done), a.seeds)
        jobs = {k: v for k, v in jobs.items() if k[2] < a.seeds}
        n_problems = 24
    problems = {"scarce": progrs.load_problems(HERE / "test_scarce.jsonl")[:n_problems],
                "sparse": progrs.load_problems(HERE / "test.jsonl")[:n_problems],
                "fluent": progrs.load_problems(HERE / "test.jsonl")[:n_problems]}
    models = {"scarce": SCARCE, "sparse": REGIMES["sparse"], "fluent": FLUENT}
    torch.set_num_threads(a.jobs)
    stats = {r: regime_stats(models[r], problems[r]) for r in problems}
    t_stats = time.perf_counter() - t0
    torch.set_num_threads(1)
    order = sorted(jobs, key=lambda k: (k[2], list(SCARCE_SET["arms"]).index(k[0]),
                                        SCARCE_SET["arms"][k[0]].index(k[1])))
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = {k: pool.submit(run, *jobs[k]) for k in order}
        res = {k: f.result() for k, f in futures.items()}
    wall = time.perf_counter() - t0
    command = " ".join(["python tiny_task/compare.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    body = [HEAD_END, "", "# Results", "",
            f"Produced by `{command}` at commit {commit}: {len(res)} runs of {a.steps} steps x {P} prompts x "
            f"{G} rollouts ({sum(r['wall_s'] for r in res.values()) / 60:.1f} minutes of run time, summed over "
            f"the runs), {a.jobs} at a time; this invocation took {wall / 60:.1f} minutes ({t_stats:.0f} s of "
            f"it measuring the starting points). Per-run metrics and logs: the run folder "
            f"(`--out`)/scarce_comparison/.", "",
            *([f"Report only (`--report-only`): the invocation that made the runs was stopped before "
               f"it finished; these tables use the {a.seeds} seeds whose runs had all finished, and the "
               f"starting points below are a small sample ({n_problems} problems) for the group examples; "
               f"the head gives the full measure.", ""] if a.report_only else []),
            "## Starting points", "",
            f"The first {n_problems} test problems of each regime's test file x {G} samples at T = 1, before "
            "any training; the rule PRM at tau 0.1, the learned one at tau 0.5.", "",
            *regime_table(stats), "",
            "Scarce regime: mean b (rule PRM) against the judged true steps written before the first false "
            "one:", "", *sound_steps_table(stats["scarce"]), "",
            "## One group of each type", "",
            f"From the starting points' samples, at lam {a.lam:g}: the centred bonus c, A_out, and the "
            "advantage each arm gives (the +arms keep c only in their group types).", "",
            *group_examples(stats, a.lam),
            *scarce_report(stats, res, a)]
    for r in SCARCE_SET["arms"]:
        body += [f"![{r}](results_scarce_{r}.png)", ""]
        scarce_plot(res, a, r, HERE / f"results_scarce_{r}.png")
    path = HERE / "results_scarce.md"
    head = path.read_text().split(HEAD_END)[0]
    path.write_text(head + "\n".join(body) + "\n")
    print("\n".join(body))
    print(f"wrote {path.relative_to(ROOT)} in {wall / 60:.1f} minutes")


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
    p.add_argument("--regime", default="both", choices=["both", *REGIMES, "fluent", "scarce", "pace"],
                   help="which warm start(s); fluent: the fluent-failure comparison (results_fluent.md); "
                   "scarce: the group-type comparison in three regimes (results_scarce.md); pace: the "
                   "scarce regime for 32 steps, eight arms, pass@k (pace.py, results_pace.md)")
    p.add_argument("--steps", type=int, help="policy updates per run (12; fluent: %d)" % FLUENT_SET["steps"])
    p.add_argument("--eval-every", type=int, help="steps between evaluations (3; fluent: %d)"
                   % FLUENT_SET["eval_every"])
    p.add_argument("--eval-size", type=int, help="the first N test problems (200; fluent: %d)"
                   % FLUENT_SET["eval_size"])
    p.add_argument("--eval-samples", type=int, help="samples per problem for sampled pass@1 (4; fluent: "
                   "%d)" % FLUENT_SET["eval_samples"])
    p.add_argument("--lam", type=float, default=1.0, help="weight of the process bonus")
    p.add_argument("--lams", default=",".join(map(str, FLUENT_SET["lams"])),
                   help="fluent regime only: the weights of the process bonus, comma-separated")
    p.add_argument("--seeds", type=int, help="N: seeds 0 .. N-1 (3; fluent: %d)" % FLUENT_SET["seeds"])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--out", default=str(ROOT / "out" / "compare"), help="where the runs go")
    p.add_argument("--arms", help=f"comma-separated, some of {', '.join(ARMS)} (outcome always runs; "
                   f"default all; fluent: {','.join(FLUENT_SET['arms'])})")
    p.add_argument("--prms", default=",".join(PRMS), help="rule, learned or both")
    p.add_argument("--report-only", action="store_true", help="--regime scarce: no new runs; report the "
                   "seeds whose runs all finished (for an invocation stopped before its end)")
    p.add_argument("--tag", default="", help="an exploratory follow-up: write results_TAG.md, marked "
                   "as added after the pre-registered results, instead of results.md")
    a = p.parse_args()
    if a.regime == "pace":
        from pace import pace_main
        if a.arms or a.prms != ",".join(PRMS):
            p.error("--regime pace: the arms and the PRM are fixed (pace.PACE_SET)")
        return pace_main(a)
    if a.regime == "scarce":
        for k, v in SCARCE_SET.items():
            if k not in ("arms", "prms") and getattr(a, k, None) is None:
                setattr(a, k, v)
        if a.arms or a.prms != ",".join(PRMS):
            p.error("--regime scarce: the arms and the PRM are fixed (SCARCE_SET)")
        return scarce_main(a)
    fixed = FLUENT_SET if a.regime == "fluent" else \
        dict(steps=12, eval_every=3, eval_size=200, eval_samples=4, seeds=3, arms=list(ARMS))
    for k, v in fixed.items():
        if getattr(a, k, None) is None:
            setattr(a, k, ",".join(v) if k == "arms" else v)
    a.arms = ["outcome", *[x for x in a.arms.split(",") if x != "outcome"]]
    a.prms = a.prms.split(",")
    a.lams = [float(x) for x in a.lams.split(",")]
    for flag, xs, known in (("--arms", a.arms, ARMS), ("--prms", a.prms, PRMS)):
        if not set(xs) <= set(known):
            p.error(f"{flag}: unknown {sorted(set(xs) - set(known))}; expected some of {list(known)}")
    t0 = time.perf_counter()
    import progrs
    import torch

    regimes = list(REGIMES) if a.regime == "both" else [a.regime]
    models = {**REGIMES, "fluent": FLUENT}
    # the starting points: the evaluation problems (the fluent regime: the first 200, as its head)
    problems = progrs.load_problems(HERE / "test.jsonl")[:200 if a.regime == "fluent" else a.eval_size]
    torch.set_num_threads(a.jobs)
    stats = {r: regime_stats(models[r], problems) for r in regimes}
    t_stats = time.perf_counter() - t0
    torch.set_num_threads(1)

    if a.regime == "fluent":
        jobs = {k: (Path(a.out) / "fluent" / "-".join([k[0], k[1], *([f"lam{k[2]:g}"] if k[2] else []),
                                                       f"seed{k[3]}"]), ["--model", str(FLUENT), *v])
                for k, v in fluent_runs(a).items()}
    else:
        jobs = {(r, *k): (Path(a.out) / r / f"{k[0]}-{k[1]}-seed{k[2]}", ["--model", str(REGIMES[r]), *v])
                for r in regimes for k, v in arm_runs(a).items()}
    res = run_all(jobs, a)
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
    if a.regime == "fluent":
        png = f"{stem}_fluent.png" if not a.tag else f"{stem}.png"
        body += fluent_report(stats["fluent"], res, a, jobs) + [f"![fluent]({png})", ""]
        fluent_plot(res, a, HERE / png)
    for r in regimes if a.regime != "fluent" else ():
        sub = {k[1:]: v for k, v in res.items() if k[0] == r}
        png = f"{stem}.png" if a.tag and len(regimes) == 1 else f"{stem}_{r}.png"
        body += regime_report(r, sub, a) + [f"![{r}]({png})", ""]
        plot(r, sub, a, HERE / png)
    if a.tag:
        path = HERE / f"{stem}.md"
        head = (f"# Exploratory: `{command}`\n\nAdded after the pre-registered results in "
                f"tiny_task/results{'_fluent' if a.regime == 'fluent' else ''}.md were seen; not part of the pre-registered tests. The verdict lines "
                "apply the pre-registered rules to these runs.\n\n")
    else:
        path = HERE / ("results.md" if a.regime == "both" else f"results_{a.regime}.md")
        head = (HERE / ("results_fluent.md" if a.regime == "fluent" else "results.md")).read_text()
        head = head.split(HEAD_END)[0]
    path.write_text(head + "\n".join(body) + "\n")
    print("\n".join(body))
    print(f"wrote {path.relative_to(ROOT)} in {wall / 60:.1f} minutes")


if __name__ == "__main__":
    main()
