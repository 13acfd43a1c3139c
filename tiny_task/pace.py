"""The pace comparison: the scarce regime run long enough to see, with room for a careful answer, eight
arms, and pass@k at the end of every run. Head (hypotheses, fixed settings, how each verdict is
computed, written before any run) and results: tiny_task/results_pace.md.

    python tiny_task/compare.py --regime pace   # the pre-registered invocation (PACE_SET, 2 jobs)
    python tiny_task/pace.py --lengths          # the careful solutions' token lengths, per data file

Each run is `python progrs.py` (the controls through controls.py), one thread, from the scarce warm
start (tiny_task/model_scarce) on train_scarce.jsonl, evaluated on test_scarce.jsonl. When a run ends,
its last checkpoint is evaluated alone (`progrs.py --steps 0`) with PASSK_SAMPLES samples a problem:
pass@k for k = 1, 2, 4, ... 32, by the unbiased estimator. The warm start itself gets the same
evaluation (seed 0): the base model's pass@k curve.
"""
import argparse
import math
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

from compare import (ARMS, G, HEAD_END, P, PRMS, SCARCE, SCARCE_DATA, beyond, fcurve, fmean,  # noqa: E402
                     fragile, h1_verdict, mse, run, se_txt, txt)

# the fixed settings, registered in the head of results_pace.md
PACE_SET = dict(steps=32, eval_every=8, eval_size=200, eval_samples=2, seeds=5, lam=1.0,
                max_new_tokens=80, passk_samples=32, passk_size=200, from_step=16,
                arms=["outcome", "progrs", "absolute", "progrs+shuffle", "progrs-strict",
                      "progrs+constant", "progrs+allwrong", "progrs+mixed"])
PLOT_ARMS = ["outcome", "progrs", "absolute", "progrs+shuffle", "progrs-strict"]
PASSK_PLOT_ARMS = ["outcome", "progrs", "progrs+constant"]
KS = [1, 2, 4, 8, 16, 32]
RESULTS = HERE   # results_pace.md and its plots
LENGTH_FILES = {"scarce": (SCARCE, ["train_scarce.jsonl", "test_scarce.jsonl"]),
                "sparse": (HERE / "model_sparse", ["train.jsonl", "test.jsonl"]),
                "fluent": (HERE / "model_fluent", ["train.jsonl", "test.jsonl"])}


def careful_lengths() -> list[dict]:
    """Per regime and data file: the token length of each problem's careful solution (every step,
    then the answer line), as the regime's model's tokenizer splits it after the prompt, plus the
    one token that ends the answer line (a newline or EOS)."""
    from transformers import AutoTokenizer
    import progrs
    from make_data import solution

    rows = []
    for regime, (model, files) in LENGTH_FILES.items():
        tok = AutoTokenizer.from_pretrained(str(model))
        for name in files:
            lengths = []
            for p in progrs.load_problems(HERE / name):
                prompt = tok(progrs.build_prompt(p["question"]))["input_ids"]
                full = tok(progrs.build_prompt(p["question"]) + solution(p["question"]))["input_ids"]
                assert full[:len(prompt)] == prompt, "the solution's first token merged with the prompt"
                lengths.append(len(full) - len(prompt) + 1)
            rows.append(dict(regime=regime, file=name, n=len(lengths), median=statistics.median(lengths),
                             longest=max(lengths), over_64=sum(x > 64 for x in lengths)))
    return rows


def lengths_table(rows: list[dict]) -> list[str]:
    out = ["| regime | file | problems | median tokens | longest | longer than 64 |",
           "| --- | --- | --- | --- | --- | --- |"]
    return out + [f"| {r['regime']} | {r['file']} | {r['n']} | {r['median']:g} | {r['longest']} | "
                  f"{r['over_64']} ({r['over_64'] / r['n']:.0%}) |" for r in rows]


def train_flags(a, arm: str, seed: int) -> list[str]:
    return ["--model", str(SCARCE), *SCARCE_DATA, "--steps", str(a.steps), "--prompts-per-step", str(P),
            "--group-size", str(G), "--eval-every", str(a.eval_every), "--eval-size", str(a.eval_size),
            "--eval-samples", str(a.eval_samples), "--max-new-tokens", str(a.max_new_tokens),
            "--lam", str(a.lam), *ARMS[arm], *PRMS["rule"], "--seed", str(seed)]


def passk_flags(a, model: Path, seed: int) -> list[str]:
    """The end-of-run evaluation: the checkpoint alone, no update (--steps 0), tiny defaults."""
    return ["--model", str(model), "--defaults", "tiny", *SCARCE_DATA, "--steps", "0",
            "--eval-size", str(a.passk_size), "--eval-samples", str(a.passk_samples),
            "--max-new-tokens", str(a.max_new_tokens), *PRMS["rule"], "--seed", str(seed)]


def train_then_passk(a, folder: Path, arm: str, seed: int) -> dict:
    trained = run(folder, train_flags(a, arm, seed))
    passk = run(folder / "passk", passk_flags(a, folder / "model", seed))
    return dict(trained, passk=passk["rows"][0], passk_wall_s=passk["wall_s"])


def passk_curve(row: dict) -> list[float]:
    return [row["eval_sampled_accuracy"] if k == 1 else row[f"eval_sampled_pass@{k}"] for k in KS]


# ---- the report -------------------------------------------------------------------------------------

def report(res: dict, base: dict, a) -> list[str]:
    seeds = range(a.seeds)
    budget = a.steps * P * G
    runs = {arm: [res[(arm, s)] for s in seeds] for arm in a.arms}
    steps = [e["step"] for e in runs["outcome"][0]["rows"] if "eval_accuracy" in e]
    late = [i for i, t in enumerate(steps) if t >= a.from_step]
    acc = {arm: [fcurve(r, "eval_sampled_accuracy") for r in rs] for arm, rs in runs.items()}
    gains = {arm: [statistics.mean(c[i] - o[i] for i in late) for c, o in zip(acc[arm], acc["outcome"])]
             for arm in a.arms}
    ff = {arm: [fcurve(r, "eval_sampled_fluent_failure_rate") for r in rs] for arm, rs in runs.items()}
    rise = {}
    for arm in a.arms:
        d = [[x - y for x, y in zip(c, o)] for c, o in zip(ff[arm], ff["outcome"])]
        best = max(range(1, len(steps)), key=lambda i: fmean(x[i] for x in d))
        rise[arm] = (steps[best], [x[best] for x in d])
    end = {arm: [r["passk"] for r in rs] for arm, rs in runs.items()}

    lines = ["## Over training", "",
             f"Sampled pass@1: {a.eval_samples} samples per problem at T = 1 on the first {a.eval_size} "
             f"problems of test_scarce.jsonl, every {a.eval_every} steps; mean ± standard error over "
             f"{a.seeds} seeds. Each step is {P * G} rollouts.", "",
             "| arm | " + " | ".join(f"step {t}" for t in steps) + " |", "| --- |" + " --- |" * len(steps)]
    for arm in a.arms:
        lines.append(f"| {arm} | " + " | ".join(se_txt(list(v)) for v in zip(*acc[arm])) + " |")
    lines += ["", "Greedy pass@1 on the same problems:", "",
              "| arm | " + " | ".join(f"step {t}" for t in steps) + " |", "| --- |" + " --- |" * len(steps)]
    for arm in a.arms:
        greedy = [fcurve(r, "eval_accuracy") for r in runs[arm]]
        lines.append(f"| {arm} | " + " | ".join(se_txt(list(v)) for v in zip(*greedy)) + " |")
    lines += ["", "## At the end", "",
              f"'Gain': the paired (same seed) difference from outcome-only in sampled pass@1, averaged over "
              f"the evaluations from step {a.from_step} on; * marks more than 2 standard errors from zero. "
              f"'Fluent rise': the evaluation with the largest mean paired excess of the sampled "
              f"fluent-failure rate over outcome-only's. The last four columns: the end-of-run evaluation, "
              f"{a.passk_samples} samples on each of the first {a.passk_size} test problems; trace errors: "
              "the share of right sampled answers reached through a false equation.", "",
              "| arm | gain over outcome | fluent rise (step) | greedy pass@1 | sampled pass@1 | pass@32 | "
              "trace errors | all-wrong groups / step | wall (s) |", "| --- |" + " --- |" * 8]
    for arm in a.arms:
        tr = [[x for x in r["rows"] if "train_accuracy" in x] for r in runs[arm]]
        aw = [statistics.mean(x["groups_all_wrong"] for x in t) for t in tr]
        e = end[arm]
        lines.append(
            f"| {arm} | {'—' if arm == 'outcome' else se_txt(gains[arm], star=True)} | "
            f"{'—' if arm == 'outcome' else se_txt(rise[arm][1], star=True) + f' ({rise[arm][0]})'} | "
            f"{se_txt([x['eval_accuracy'] for x in e])} | {se_txt([x['eval_sampled_accuracy'] for x in e])} | "
            f"{se_txt([x['eval_sampled_pass@32'] for x in e])} | "
            f"{se_txt([x['eval_sampled_trace_error_rate'] for x in e])} | {se_txt(aw, 1, '{:.2f}')} | "
            f"{se_txt([r['wall_s'] + r['passk_wall_s'] for r in runs[arm]], 1, '{:.0f}')} |")
    lines += ["", f"pass@k at the end ({a.passk_samples} samples a problem, unbiased estimator, %, mean ± "
              f"standard error over seeds; the warm start: seed 0 alone):", "",
              "| arm | " + " | ".join(f"k = {k}" for k in KS) + " |", "| --- |" + " --- |" * len(KS),
              "| warm start | " + " | ".join(f"{100 * x:.1f}" for x in passk_curve(base)) + " |"]
    for arm in a.arms:
        curves = [passk_curve(x) for x in end[arm]]
        lines.append(f"| {arm} | " + " | ".join(se_txt(list(v)) for v in zip(*curves)) + " |")
    return lines + [""] + verdicts(a, gains, rise, end, acc, steps, budget)


def share_verdict(name: str, arm: str, gains: dict, bar: float, keep_at_least: bool, what: str) -> str:
    """A verdict on arm's mean gain as a share of progrs's: at least `bar` of it (keep_at_least) or at
    most `bar` of it; not testable when progrs shows no gain."""
    (mp, sep), (mx, sex) = mse(gains["progrs"]), mse(gains[arm])
    sign = 1 if keep_at_least else -1
    margin, se_m = mse([sign * (x - bar * p) for x, p in zip(gains[arm], gains["progrs"])])
    if mp <= 0:
        v = "not testable (progrs shows no gain over outcome-only)"
    else:
        v = "supported" if sign * (mx - bar * mp) >= 0 else "not supported"
    share = f" ({mx / mp:.0%} of progrs's)" if mp > 0 else ""
    return (f"- **{name}: {v}.** Gain over outcome-only: progrs {txt(mp, sep)}, {arm} {txt(mx, sex)}"
            f"{share}; {what} per-seed margin {txt(margin, se_m)}."
            + (" progrs's own gain is within noise." if mp > 0 and not beyond(mp, sep) else "")
            + (fragile(margin, se_m) if v == "supported" else ""))


def verdicts(a, gains, rise, end, acc, steps, budget) -> list[str]:
    lines = ["## Hypotheses", ""]
    m, se = mse(gains["progrs"])
    ok = m >= 0.05 and beyond(m, se) and m > 0
    lines.append(f"- **H10 (the gain): {'supported' if ok else 'not supported'}.** progrs's gain over "
                 f"outcome-only, from step {a.from_step} on: {txt(m, se)}. Bars: at least +5.0 points "
                 f"(margin {txt(m - 0.05, se)}) and more than 2 standard errors."
                 + (fragile(m - 0.05, se) if ok else ""))
    lines.append(share_verdict("H11 (the PRM's information)", "progrs+shuffle", gains, 1 / 3, False,
                               "the bar is a third of progrs's gain;"))
    d_te = [x["eval_sampled_trace_error_rate"] - y["eval_sampled_trace_error_rate"]
            for x, y in zip(end["progrs"], end["outcome"])]
    mt, set_ = mse(d_te)
    te = {arm: mse([x["eval_sampled_trace_error_rate"] for x in end[arm]])[0] for arm in a.arms}
    lines.append(f"- **H12 (right for the right reasons): {'supported' if mt < 0 else 'not supported'}.** "
                 f"Trace errors among right sampled answers at the end: progrs {100 * te['progrs']:.1f}%, "
                 f"outcome-only {100 * te['outcome']:.1f}%; paired difference {txt(mt, set_)}"
                 + (" (beyond 2 standard errors)." if beyond(mt, set_) else
                    ". Fragile: within 2 standard errors of zero." if mt < 0 else ".")
                 + " All arms: " + ", ".join(f"{arm} {100 * v:.1f}%" for arm, v in te.items()) + ".")
    lines.append(share_verdict("H13 (the ranking, not the lift)", "progrs-strict", gains, 2 / 3, True,
                               "the bar is two thirds of progrs's gain;"))
    lines.append(h1_verdict("H1 (fewer rollouts)", [c[-1] for c in acc["outcome"]], acc["progrs"], steps,
                            budget))
    lines.append(share_verdict("H8 (all-wrong against mixed)", "progrs+allwrong", gains, 2 / 3, True,
                               "the bar is two thirds of progrs's gain;")
                 + f" Mixed groups only (progrs+mixed): {txt(*mse(gains['progrs+mixed']))}.")
    (mp, _), (mc, sec) = mse(gains["progrs"]), mse(gains["progrs+constant"])
    share = mc / mp if mp > 0 else math.nan
    label = ("not testable (progrs shows no gain over outcome-only)" if mp <= 0 else
             "the push alone gives most of the gain" if share >= 2 / 3 else
             "the push alone gives little of the gain" if share <= 1 / 3 else
             "the push alone gives part of the gain")
    # the margin to the nearest band edge, per seed (positive: inside the band named)
    edges = {"most": [c - 2 / 3 * q for c, q in zip(gains["progrs+constant"], gains["progrs"])],
             "little": [q / 3 - c for c, q in zip(gains["progrs+constant"], gains["progrs"])]}
    edges["part"] = min((mse([-x for x in v]) for v in edges.values()), key=lambda x: x[0])
    key = next((k for k in ("most", "little", "part") if k in label), None)
    margin = edges[key] if key == "part" else mse(edges[key]) if key else (math.nan, math.nan)
    lines.append(f"- **H14 (the push alone): {label}.** progrs+constant's gain {txt(mc, sec)}"
                 + (f", {share:.0%} of progrs's" if mp > 0 else "") + "; bands: at least two thirds: most; "
                 "at most a third: little; between: part"
                 + (f"; per-seed margin to the nearest band edge {txt(*margin)}." if key else ".")
                 + (fragile(*margin) if key else ""))
    d32 = [x["eval_sampled_pass@32"] - y["eval_sampled_pass@32"] for x, y in zip(end["progrs"], end["outcome"])]
    m32, se32 = mse(d32)
    ok = m32 >= -2 * se32
    lines.append(f"- **H15 (no diversity bought): {'supported' if ok else 'not supported'}.** progrs's "
                 f"pass@32 minus outcome-only's, paired: {txt(m32, se32)}; the bar: not below zero by more "
                 "than 2 standard errors."
                 + (fragile(m32 + 2 * se32, se32) if ok else ""))
    for arm in ("absolute", "progrs"):
        lines.append(f"- **{arm}:** gain {txt(*mse(gains[arm]))}; largest rise of the sampled fluent-failure "
                     f"rate over outcome-only's {txt(*mse(rise[arm][1]))} (step {rise[arm][0]}).")
    return lines + [""]


# ---- plots ------------------------------------------------------------------------------------------

def plots(res: dict, base: dict, a) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("pace.py: matplotlib is not installed; skipping the plots (pip install matplotlib)")
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    for arm in PLOT_ARMS:
        rs = [res[(arm, s)] for s in range(a.seeds)]
        x = [e["step"] * P * G for e in rs[0]["rows"] if "eval_accuracy" in e]
        ys = [[100 * y for y in fcurve(r, "eval_sampled_accuracy")] for r in rs]
        mean = [fmean(v) for v in zip(*ys)]
        se = [mse(list(v))[1] for v in zip(*ys)]
        ax.plot(x, mean, marker="o", ms=3, label=arm, ls="--" if "+" in arm or "strict" in arm else "-")
        ax.fill_between(x, [u - d for u, d in zip(mean, se)], [u + d for u, d in zip(mean, se)], alpha=0.1)
    ax.set(xlabel="rollouts", ylabel="sampled pass@1 (%)",
           title=f"scarce regime, rule PRM, lam {a.lam:g}: {a.seeds} seeds, ± 1 s.e.")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "results_pace.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.5, 4.3))
    ax.plot(KS, [100 * y for y in passk_curve(base)], marker="o", ms=3, color="gray", label="warm start")
    for arm in PASSK_PLOT_ARMS:
        curves = [[100 * y for y in passk_curve(res[(arm, s)]["passk"])] for s in range(a.seeds)]
        ax.plot(KS, [fmean(v) for v in zip(*curves)], marker="o", ms=3, label=arm,
                ls="--" if "+" in arm else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.set(xlabel="k", ylabel="pass@k (%)", title=f"end of training: {a.passk_samples} samples x "
           f"{a.passk_size} problems, mean of {a.seeds} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "results_pace_passk.png", dpi=100)
    plt.close(fig)
    return ["![sampled pass@1 against rollouts](results_pace.png)", "",
            "![pass@k against k](results_pace_passk.png)", ""]


def pace_main(a):
    """--regime pace: the lengths, the runs (seed by seed, each with its pass@k evaluation), the report."""
    for k, v in PACE_SET.items():
        setattr(a, k, v)
    t0 = time.perf_counter()
    lengths = careful_lengths()
    longest = max(r["longest"] for r in lengths if r["regime"] == "scarce")
    if longest > a.max_new_tokens:
        sys.exit(f"pace.py: a careful solution is {longest} tokens, over --max-new-tokens {a.max_new_tokens}")
    out = Path(a.out) / "pace"
    with ThreadPoolExecutor(a.jobs) as pool:
        base_job = pool.submit(run, out / "warm-start-passk", passk_flags(a, SCARCE, 0))
        futures = {(arm, s): pool.submit(train_then_passk, a, out / f"{arm}-rule-seed{s}", arm, s)
                   for s in range(a.seeds) for arm in a.arms}
        res = {k: f.result() for k, f in futures.items()}
        base = base_job.result()
    wall = time.perf_counter() - t0
    command = " ".join(["python tiny_task/compare.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    summed = sum(r["wall_s"] + r["passk_wall_s"] for r in res.values()) + base["wall_s"]
    body = [HEAD_END, "", "# Results", "",
            f"Produced by `{command}` at commit {commit}: {len(res)} runs of {a.steps} steps x {P} prompts "
            f"x {G} rollouts, each followed by its pass@k evaluation, and the warm start's evaluation "
            f"({summed / 60:.1f} minutes of run time, summed), {a.jobs} at a time; this invocation took "
            f"{wall / 60:.1f} minutes. Per-run metrics and logs: the run folder (`--out`)/pace/.", "",
            "## Room for a careful answer", "",
            "Measured in this invocation (the numbers in the head were measured the same way before it):", "",
            *lengths_table(lengths), "",
            *report(res, base["rows"][0], a), *plots(res, base["rows"][0], a)]
    path = RESULTS / "results_pace.md"
    head = path.read_text().split(HEAD_END)[0]
    path.write_text(head + "\n".join(body) + "\n")
    print("\n".join(body))
    print(f"wrote {path} in {wall / 60:.1f} minutes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", action="store_true", help="print the careful solutions' lengths")
    if parser.parse_args().lengths:
        print("\n".join(lengths_table(careful_lengths())))
    else:
        parser.print_help()
