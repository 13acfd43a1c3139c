"""Mutation pass over progrs.py: does the test suite notice a plausible one-line bug?

Each mutant replaces one exact substring of progrs.py (it must occur exactly once) in a COPY of the
file in a temporary folder, beside a copy of test_progrs.py and a link to tiny_task/, and runs pytest
there on the tests named for it (-k), or on the whole suite with --full. A mutant is
  caught     some selected test failed (or errored),
  survived   every selected test passed: the suite did not notice,
  stale      its original substring is no longer in progrs.py (update the table below),
  ambiguous  its original substring occurs more than once.
The real progrs.py is never touched.

    python tiny_task/mutants.py                # every mutant on its tests, a table, the caught count
    python tiny_task/mutants.py --only 3,17    # some of them
    python tiny_task/mutants.py --full         # every mutant on the whole suite (slow)
    python tiny_task/mutants.py --baseline     # first check the unmutated file passes each selection
    python tiny_task/mutants.py --jobs 2       # two mutants at a time
"""
import argparse, concurrent.futures, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (what the bug is, the exact original text, its replacement, the tests that should notice: pytest -k)
MUTANTS = [
    # the PROGRS idea
    ("centering divides by G, not by the number of wrong rollouts",
     "/ n_wrong  ", "/ wrong.shape[-1]  ", "centering"),
    ("centering shifts right rollouts too",
     "torch.where(wrong, x - wrong_mean, x)", "torch.where(wrong, x - wrong_mean, x - wrong_mean)",
     "centering"),
    ("group_normalize uses the sample std",
     "rewards.std(-1, keepdim=True, correction=0)", "rewards.std(-1, keepdim=True, correction=1)",
     "doctests or advantage"),
    ("the absolute blend is scaled but not centred (ordering kept)",
     '"absolute": group_normalize(r + lam * b)', '"absolute": (r + lam * b) / (r + lam * b).std(-1, keepdim=True)',
     "absolute"),
    ("progrs-strict centres the right rollouts among the wrong ones",
     "outcome_conditioned_centering(b, ~correct.bool())", "outcome_conditioned_centering(b, correct.bool())",
     "strict"),
    ("max_dominant_lam also scans k = G - 1 (one wrong rollout)",
     "for k in range(1, G - 1))", "for k in range(1, G))", "dominan"),
    ("a tie between right and wrong is not a violation",
     "(adv.unsqueeze(-2) >= adv.unsqueeze(-1))", "(adv.unsqueeze(-2) > adv.unsqueeze(-1))", "dominan or absolute"),
    ("coherence windows of 2 and 3 steps",
     "def coherence_score(step_scores, windows=(2, 4)", "def coherence_score(step_scores, windows=(2, 3)",
     "coherence"),
    ("coherence windows tile instead of sliding",
     "s.unfold(0, min(w, s.numel()), 1)", "s.unfold(0, min(w, s.numel()), w)", "coherence"),
    ("coherence penalty not relative to the mean",
     "torch.exp(-lam_var * sigma / mu.clamp(min=1e-12))", "torch.exp(-lam_var * sigma)", "coherence"),
    ("the gauge's pool takes every rollout of the batch, not the right ones",
     "list(right_b) + b[correct.bool()].tolist()", "list(right_b) + b.tolist()", "fluent"),
    ("the gauge counts right rollouts too",
     "return ~correct.bool() & judged.bool() & (b.float()", "return judged.bool() & (b.float()", "fluent"),
    ("all_wrong_push_to_fluent counts every group's push",
     "push = torch.where((k == 0)[:, None]", "push = torch.where((k >= 0)[:, None]", "fluent"),
    # flags and data
    ('a "> 0" rule accepts 0',
     'else x > float(bound))', 'else x >= float(bound))', "check_args"),
    ('"answer": true is accepted (as "True")',
     "if not isinstance(q, str) or isinstance(a, bool) or", "if not isinstance(q, str) or", "not_strings"),
    ("the length limit is off by a thousand",
     "elif max(len(q), len(str(a))) > MAX_CHARS:", "elif max(len(q), len(str(a))) > MAX_CHARS + 1000:",
     "not_strings"),
    # verifier and steps
    ('"answer:" only in one case',
     'r"answer[*\\s]{0,8}:|####", re.IGNORECASE)', 'r"answer[*\\s]{0,8}:|####")', "is_correct"),
    ("an answer line counts as finished before its newline",
     "AnswerLine(answer, start, end + (nl != -1), nl != -1)", "AnswerLine(answer, start, end + (nl != -1), True)",
     "find_answer"),
    ("the answer line is counted as a step",
     "body = completion if found is None else completion[:found.start]",
     "body = completion if found is None else completion[:found.end]", "split_steps"),
    ("an equation within 1 of its value counts as true",
     "math.isclose(v, c, rel_tol=1e-6, abs_tol=1e-6)", "math.isclose(v, c, rel_tol=1e-6, abs_tol=1.0)",
     "check_equations"),
    # PRMs
    ("the toy PRM's true and false steps swapped",
     "for t, f in map(check_equations, steps)", "for f, t in map(check_equations, steps)", "toy_prm"),
    ("prm_inputs ends one token early",
     "ends.append(len(ids) - 1)", "ends.append(len(ids) - 2)", "prm_inputs or learned_prms or two_class"),
    ("ModelPRM reads the token before each step's end",
     "at = h[r, [e for e in ends if e < self.max_len]]", "at = h[r, [e - 1 for e in ends if e < self.max_len]]",
     "learned_prms or two_class"),
    ("steps past the PRM's context are read at its last token",
     "at = h[r, [e for e in ends if e < self.max_len]]", "at = h[r, [min(e, self.max_len - 1) for e in ends]]",
     "learned_prms"),
    ("a step-tag PRM reads p(bad)",
     "lambda z: z[:, pair].softmax(-1)[:, :1]", "lambda z: z[:, pair].softmax(-1)[:, 1:]", "step_tag"),
    ("a PRM config's progrs_quantile is ignored",
     "(prm.default_tau or prm.taus[0])", "prm.taus[0]", "build_prm"),
    ("--prm-quantile is recorded but column 0 is read",
     "args.prm_quantile, args.q_index = q, prm.taus.index(q)", "args.prm_quantile, args.q_index = q, 0",
     "build_prm or quantile_flag"),
    ("b is read from column 0 whatever the quantile",
     'out["b"].append(coherence_score(q[:, q_index]', 'out["b"].append(coherence_score(q[:, 0]', "named_column"),
    ("a rollout counts as judged only if every step is",
     'bool((~q[:, q_index].isnan()).any())', 'bool((~q[:, q_index].isnan()).all())', "fluent_failure_rate"),
    ("rollout_step ignores --mode",
     "compute_advantages(correct, b, args.mode, args.lam)", 'compute_advantages(correct, b, "progrs", args.lam)',
     "named_column"),
    # rollouts and the update
    ("the mask drops the EOS token",
     "torch.where(has_eos, is_eos.int().argmax(1) + 1, T)", "torch.where(has_eos, is_eos.int().argmax(1), T)",
     "completion_mask"),
    ("sampling keeps the 50 most likely tokens only",
     "dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)",
     "dict(do_sample=True, temperature=temperature, top_k=50, top_p=1.0)", "sampling_ignores"),
    ("log-probs read one position late",
     "hidden = hidden[:, prompt_len - 1:-1]", "hidden = hidden[:, prompt_len:]", "forward_logprobs"),
    ("logits multiplied by the temperature",
     "logits = (logits if bias is None else logits + bias.float()) / temperature",
     "logits = (logits if bias is None else logits + bias.float()) * temperature", "forward_logprobs"),
    ("the update scores at temperature 1 whatever --temperature",
     "logp = token_logprobs(model, ids, att, Tp, args.temperature, amp)",
     "logp = token_logprobs(model, ids, att, Tp, 1.0, amp)", "sampling_temperature"),
    ("the loss is divided by sequences, not tokens",
     "n_tokens, Tp = adv.to(mask.device), mask.sum().clamp(min=1)",
     "n_tokens, Tp = adv.to(mask.device), torch.tensor(float(mask.shape[0]))", "supervised_gradient"),
    ("no zero_grad between ppo epochs",
     "optimizer.zero_grad(set_to_none=True)", "None", "ppo_epoch"),
    ("old log-probs recomputed every epoch (the ratio is always 1)",
     "if epoch == 0:", "if True:", "ppo_epoch"),
    ("the logged stats are the last epoch's",
     "stats = stats or dict(loss=", "stats = dict(loss=", "ppo_epoch"),
    ("gradients are never clipped",
     "clip_grad_norm_(model.parameters(), args.max_grad_norm)", "clip_grad_norm_(model.parameters(), 1e9)",
     "clipping"),
    ("the PPO clip is lopsided",
     "ratio.clamp(1 - PPO_CLIP, 1 + PPO_CLIP)", "ratio.clamp(1 - PPO_CLIP, 1 + 2 * PPO_CLIP)", "ppo_clip"),
    ("the k3 KL estimates KL(ref || pi)",
     "torch.exp(ref_logp - logp) - (ref_logp - logp) - 1", "torch.exp(logp - ref_logp) - (logp - ref_logp) - 1",
     "k3"),
    ("the KL term is left out of the loss",
     "per_token = per_token if kl is None else per_token + kl_coef * kl", "per_token = per_token",
     "kl_to_the_reference"),
    ("the reference log-probs come from the policy itself",
     "ref[k] = token_logprobs(ref_model, ids, att, Tp", "ref[k] = token_logprobs(model, ids, att, Tp",
     "kl_to_the_reference"),
    ("the warmup starts one step late (lr 0 at the first update)",
     "min(1.0, (i + 1) / (args.warmup_steps + 1))", "min(1.0, i / (args.warmup_steps + 1))", "warmup"),
    # evaluation, checkpoints, main
    ("sampled pass@1 is sampled at temperature 1",
     "sampled = complete(args.eval_samples, args.temperature)", "sampled = complete(args.eval_samples, 1.0)",
     "sampled_pass"),
    ("evaluation ignores the training pool of right b's",
     'for k in ("b", "correct", "judged")), right_pool)', 'for k in ("b", "correct", "judged")), ())',
     "fluent_failure_rate"),
    ("the most mixed group is not looked for",
     "i = int((k * (G - k)).argmax())", "i = 0", "teaching_view"),
    ("the last step is evaluated only on the --eval-every schedule",
     "if step % args.eval_every == 0 or step == args.steps:", "if step % args.eval_every == 0:",
     "shorter_than_eval_every"),
    ("the last step is saved only on the --save-every schedule",
     "if step % args.save_every == 0 or step == args.steps:", "if step % args.save_every == 0:",
     "shorter_than_eval_every"),
    ("a save killed between the renames is not restored",
     "if old.is_dir() and not final.exists():", "if False:", "killed"),
    ("a finished save leaves model.old behind",
     "    tmp.rename(final)\n    shutil.rmtree(old, ignore_errors=True)", "    tmp.rename(final)", "killed"),
    ("--device cuda:N is not checked against the devices present",
     'device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()', 'device.type == "cuda"',
     "bad_input_is_one_line"),
    ("--out is checked only when training starts",
     "    prepare_out(args.out)                # a run", "    pass                # a run", "bad_input_is_one_line"),
    ("a truncated checkpoint's error escapes as a traceback",
     "except Exception as e:  # whatever the library raises: no network",
     "except OSError as e:  # whatever the library raises: no network", "bad_input_is_one_line"),
    # equivalent on purpose: they cannot change a result, and are expected to survive
    ("EQUIVALENT: tiny below 50M parameters or at exactly 50M (no model has exactly 50M)",
     'size = "tiny" if n_params < TINY_MAX_PARAMS', 'size = "tiny" if n_params <= TINY_MAX_PARAMS', "size_defaults"),
    ("EQUIVALENT: positions shifted by one for every row (RoPE sees only relative positions)",
     "position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)",
     "position_ids = attention_mask.cumsum(-1).clamp(min=0)", "forward_logprobs or sampling_ignores"),
    # size defaults
    ("the tiny and LLM defaults swapped",
     'for i, size in enumerate(("tiny", "llm"))', 'for i, size in enumerate(("llm", "tiny"))', "size_defaults"),
    ("--save-every defaults to every step, not to --eval-every",
     "args.save_every = args.save_every or args.eval_every", "args.save_every = args.save_every or 1",
     "size_defaults"),
]


def run_one(i, mutant, source, tests, full, timeout):
    desc, old, new, k = mutant
    n = source.count(old) if old else 1                 # no original text: the unmutated file
    if n != 1:
        return i, "stale" if n == 0 else "ambiguous", 0.0, ""
    with tempfile.TemporaryDirectory(prefix=f"mutant{i}_") as tmp:
        tmp = Path(tmp)
        (tmp / "progrs.py").write_text(source.replace(old, new) if old else source)
        shutil.copy(tests, tmp / "test_progrs.py")
        (tmp / "tiny_task").symlink_to(ROOT / "tiny_task")
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "test_progrs.py"]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd + ([] if full else ["-k", k]), cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            return i, "timeout", time.time() - t0, ""
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-200:]
        status = {0: "survived", 1: "caught", 5: "no tests"}.get(proc.returncode, "caught")
        return i, status, time.time() - t0, tail


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated mutant numbers (from 1)")
    p.add_argument("--full", action="store_true", help="run the whole suite on each mutant")
    p.add_argument("--baseline", action="store_true", help="first run the unmutated file on each selection")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per mutant")
    a = p.parse_args()
    source, tests = (ROOT / "progrs.py").read_text(), ROOT / "test_progrs.py"
    chosen = [int(x) for x in a.only.split(",")] if a.only else range(1, len(MUTANTS) + 1)
    if a.baseline:
        ks = " or ".join(f"({MUTANTS[i - 1][3]})" for i in chosen)
        _, status, secs, tail = run_one(0, ("baseline", "", "", ks), source, tests, a.full, a.timeout * 4)
        print(f"baseline (unmutated, the union of the selections): {status}, {tail} [{secs:.0f}s]", flush=True)
        if status != "survived":  # "survived" here means every selected test passed
            sys.exit("the unmutated progrs.py fails its own selection: fix that first")
    print(f"{'#':>3}  {'result':<9} {'secs':>5}  mutant  [tests: -k]", flush=True)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_one, i, MUTANTS[i - 1], source, tests, a.full, a.timeout) for i in chosen]
        for f in concurrent.futures.as_completed(futures):
            i, status, secs, tail = f.result()
            results[i] = status
            desc, _, _, k = MUTANTS[i - 1]
            print(f"{i:>3}  {status:<9} {secs:5.0f}  {desc}  [{'all' if a.full else k}]", flush=True)
    if len(results) > 1:
        print("\nin order: " + " ".join(f"{i}:{results[i]}" for i in sorted(results)))
    counts = {s: sum(v == s for v in results.values()) for s in sorted(set(results.values()))}
    equivalent = [i for i in results if MUTANTS[i - 1][0].startswith("EQUIVALENT")]
    real = [i for i in results if i not in equivalent]
    print(f"\ncaught {sum(results[i] == 'caught' for i in real)} of {len(real)} mutants that can change a "
          f"result; {sum(results[i] == 'survived' for i in equivalent)} of {len(equivalent)} equivalent ones "
          f"survived, as they should; all results: {counts}")
    missed = [i for i in real if results[i] != "caught"]
    if missed:
        print("not caught: " + ", ".join(f"#{i} {results[i]} ({MUTANTS[i - 1][0]})" for i in sorted(missed)))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
