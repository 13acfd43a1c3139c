"""Mutation pass over the model-bound code: does the test suite notice a plausible one-line bug?

The model-free functions of progrs.py (centering, advantages, dominance, coherence, fluent_failures, the
verifier, split_steps, the toy PRM, check_args, apply_defaults, load_problems, record_problem,
parse_gold, step_metrics, rollout_metrics, score_completions) are mutated by a tool, mutmut
(tiny_task/mutation.sh), whose tests run in seconds. The rest loads models: rollouts, log-probs and
the update, evaluation, train and --resume, main's checks, the learned PRMs, the run folder and
GSM8K's download (all in progrs.py) and the TRL trainer (tiny_task/trl_progrs.py). Its tests take seconds to minutes each, too slow
for a tool that tries every operator; so here is a hand-written table of one-line bugs, each with the
tests that should notice it. A few model-free pieces outside the tool's list ride along (completion_mask,
quantile_index, pick_device, teaching_view).

Each mutant names its file and replaces one exact substring of it (it must occur exactly once) in a
COPY in a temporary folder, beside copies of progrs.py, test_progrs.py and tiny_task/, and runs pytest
there on the tests named for it (-k), or on the whole suite with --full. A mutant is
  caught     some selected test failed (or errored),
  survived   every selected test passed: the suite did not notice,
  stale      its original substring is no longer in its file (update the table below),
  ambiguous  its original substring occurs more than once.
The real files are never touched.

    python tiny_task/mutants.py                # every mutant on its tests, a table, the caught count
    python tiny_task/mutants.py --only 3,17    # some of them
    python tiny_task/mutants.py --full         # every mutant on the whole suite (slow)
    python tiny_task/mutants.py --baseline     # first check the unmutated files pass each selection
    python tiny_task/mutants.py --jobs 2       # two mutants at a time
"""
import argparse, concurrent.futures, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
P = L = R = G = "progrs.py"  # the learned PRMs, the run folder and GSM8K live in progrs.py too
T = "tiny_task/trl_progrs.py"

# (file, what the bug is, the exact original text, its replacement, the tests that should notice: pytest -k)
MUTANTS = [
    # rollouts: the mask, the stop at the answer line, generate()
    (P, "the mask drops the EOS token",
     "torch.where(has_eos, is_eos.int().argmax(1) + 1, T)", "torch.where(has_eos, is_eos.int().argmax(1), T)",
     "completion_mask"),
    (P, "the mask ignores where a row stopped at its answer line",
     "torch.minimum(length, stopped)", "length", "completion_mask_ends or completions_end_at"),
    (P, "a row stopped at its answer line counts as truncated",
     "return mask, ~has_eos & (stopped == 0)", "return mask, ~has_eos", "completion_mask_ends"),
    (P, "StopAtAnswer records the stop one token early (the newline cut off)",
     "self.stopped[row] = input_ids.shape[1] - self.prompt_len",
     "self.stopped[row] = input_ids.shape[1] - self.prompt_len - 1", "completions_end_at"),
    (P, "sampling keeps the 50 most likely tokens only",
     "dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)",
     "dict(do_sample=True, temperature=temperature, top_k=50, top_p=1.0)", "sampling_ignores"),
    (P, "the model's own generation_config is not put back",
     "model.generation_config = shipped", "pass", "sampling_ignores"),
    (P, "a chat prompt gets the tokenizer's special tokens a second time",
     "add_special_tokens=not chat)", "add_special_tokens=True)", "chat_prompts_get"),
    (P, "the prompts' masks repeated in the wrong row order",
     'prompt_mask = enc["attention_mask"].repeat_interleave(n, 0)',
     'prompt_mask = enc["attention_mask"].repeat(n, 1)', "sampling_ignores or entropy_is"),
    # log-probs, entropy, loss, update
    (P, "log-probs read one position late",
     "body.last_hidden_state[:, prompt_len - 1:-1]", "body.last_hidden_state[:, prompt_len:]", "forward_logprobs"),
    (P, "logits multiplied by the temperature",
     "logits = (logits if bias is None else logits + bias.float()) / temperature",
     "logits = (logits if bias is None else logits + bias.float()) * temperature", "forward_logprobs"),
    (P, "the entropy metric at temperature 1 whatever --temperature",
     "entropy = log_z - (logits.softmax(-1) * logits).sum(-1)",
     "entropy = (logits * temperature).logsumexp(-1) - ((logits * temperature).softmax(-1) * logits * "
     "temperature).sum(-1)", "entropy_is"),
    (P, "the entropy metric counts the tokens after a completion's end",
     "entropy_sum += float((entropy * mask[s]).sum() / n_tokens)",
     "entropy_sum += float(entropy.sum() / n_tokens)", "entropy_is"),
    (P, "the update scores at temperature 1 whatever --temperature",
     "logp, entropy = token_logprobs(model, ids, att, Tp, args.temperature, amp, entropy=True)",
     "logp, entropy = token_logprobs(model, ids, att, Tp, 1.0, amp, entropy=True)",
     "update_reads_log_probs or entropy_is"),
    (P, "the loss is divided by sequences, not tokens",
     "n_tokens = mask.sum().clamp(min=1)", "n_tokens = torch.tensor(float(mask.shape[0]))",
     "supervised_gradient"),
    (P, "the ratio inverted (the gradient's sign flipped)",
     "ratio = torch.exp(logp - old_logp)", "ratio = torch.exp(old_logp - logp)",
     "one_update_raises or supervised_gradient"),
    (P, "old log-probs not detached (rho is 1 in the graph too: no gradient)",
     "old[i] = logp.detach()", "old[i] = logp", "supervised_gradient or each_ppo_epoch"),
    (P, "no zero_grad between ppo epochs", "optimizer.zero_grad(set_to_none=True)", "None", "each_ppo_epoch"),
    (P, "old log-probs recomputed every epoch (the ratio is always 1)", "if epoch == 0:", "if True:",
     "each_ppo_epoch"),
    (P, "the logged stats are the last epoch's", "stats = stats or first", "stats = first", "each_ppo_epoch"),
    (P, "gradients are never clipped",
     "clip_grad_norm_(model.parameters(), args.max_grad_norm)", "clip_grad_norm_(model.parameters(), 1e9)",
     "gradient_clipping"),
    (P, "a non-finite gradient norm is stepped with", "if not torch.isfinite(grad_norm):", "if False:",
     "non_finite_gradient"),
    (P, "the PPO clip is lopsided",
     "ratio.clamp(1 - PPO_CLIP, 1 + PPO_CLIP)", "ratio.clamp(1 - PPO_CLIP, 1 + 2 * PPO_CLIP)", "ppo_clip"),
    (P, "the k3 KL estimates KL(ref || pi)",
     "torch.exp(ref_logp - logp) - (ref_logp - logp) - 1", "torch.exp(logp - ref_logp) - (logp - ref_logp) - 1",
     "k3"),
    (P, "the KL term is left out of the loss",
     "per_token = per_token + kl_coef * kl", "per_token = per_token", "kl_to_the_reference"),
    (P, "the reference log-probs come from the policy itself",
     "ref[i] = token_logprobs(ref_model, ids, att, Tp", "ref[i] = token_logprobs(model, ids, att, Tp",
     "kl_to_the_reference"),
    # rollout_step and evaluate
    (P, "rollout_step ignores --mode",
     "compute_advantages(correct, b, args.mode, args.lam)", 'compute_advantages(correct, b, "progrs", args.lam)',
     "rollout_step_scores"),
    (P, "rollout_step reads the PRM's column 0 whatever the quantile",
     'score_completions(per_rollout, batch["texts"], prm, prm.q_index,',
     'score_completions(per_rollout, batch["texts"], prm, 0,', "rollout_step_scores"),
    (P, "rollout rows paired with the wrong problems (problem-major, not prompt-major)",
     "per_rollout = [p for p in problems for _ in range(G)]",
     "per_rollout = [p for _ in range(G) for p in problems]",
     "rewards_are_paired"),
    (P, "greedy pass@1 is sampled at the training temperature",
     'out = summary(1, 0.0, "eval_")', 'out = summary(1, args.temperature, "eval_")', "sampled_pass"),
    (P, "sampled pass@1 is sampled at temperature 1",
     'summary(args.eval_samples, args.temperature, "eval_sampled_")',
     'summary(args.eval_samples, 1.0, "eval_sampled_")',
     "sampled_pass"),
    (P, "an eval batch holds --eval-batch problems, not rows",
     "chunk = max(1, args.eval_batch // n)", "chunk = args.eval_batch", "sampled_pass"),
    (P, "sampled evaluation is not seeded", "    torch.manual_seed(args.seed)\n            out", "    pass\n            out",
     "sampled_evaluation_is_seeded"),
    (P, "sampled evaluation draws from the training random stream",
     'with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):',
     "with contextlib.nullcontext():", "sampled_evaluation_is_seeded"),
    (P, "evaluation ignores the training pool of right b's",
     'torch.tensor(s["judged"]), right_pool)',
     'torch.tensor(s["judged"]), ())', "evaluation_reports_the_fluent"),
    (P, "the most mixed group is not looked for (model-free, outside the tool's list: train's printout)",
     "i = int((n_right * (G - n_right)).argmax())", "i = 0", "teaching_view"),
    # train: the schedule, evaluations, saves, --resume
    (P, "the warmup starts one step late (lr 0 at the first update)",
     "min(1.0, (i + 1) / (args.warmup_steps + 1))", "min(1.0, i / (args.warmup_steps + 1))", "warmup"),
    (P, "the last step is evaluated only on the --eval-every schedule",
     "if step % args.eval_every == 0 or step == args.steps:", "if step % args.eval_every == 0:",
     "shorter_than_eval_every"),
    (P, "the last step is saved only on the --save-every schedule",
     "if step % args.save_every == 0 or step == args.steps:", "if step % args.save_every == 0:",
     "shorter_than_eval_every"),
    (P, "the first step is off by one (a fresh run trains a step 0, a resumed one redoes its last)",
     'for step in range(state["step"] + 1, args.steps + 1):', 'for step in range(state["step"], args.steps + 1):',
     "warmup or killed_after_a_checkpoint"),
    (P, "--resume: the optimizer's state is not restored",
     'optimizer.load_state_dict(state["optimizer"])', "pass", "killed_after_a_checkpoint"),
    (P, "--resume: the torch random stream is not restored",
     'torch.set_rng_state(state["torch_rng"])', "pass", "killed_after_a_checkpoint"),
    (P, "--resume: the gauge's pool of right b's starts empty",
     'collections.deque(state["right_pool"], maxlen=FLUENT_POOL)', "collections.deque([], maxlen=FLUENT_POOL)",
     "killed_after_a_checkpoint"),
    (P, "--resume: the metrics written before the checkpoint are not rewritten",
     'metrics_file.write(state["metrics"])', "pass", "killed_after_a_checkpoint"),
    (P, "--resume: the run restarts from the initial model, not the checkpoint",
     'load_model(str(Path(args.out) / "model") if state else args.model, device)',
     "load_model(args.model, device)",
     "killed_after_a_checkpoint"),
    # main, the model and PRM loaders
    (P, "--device cuda:N is not checked against the devices present",
     'device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()', 'device.type == "cuda"',
     "naming_it_and_early"),
    (P, "--out is checked only when training starts",
     "    prepare_out(args.out, args.resume)", "    pass", "naming_it_and_early"),
    (P, "a truncated checkpoint's error escapes as a traceback",
     "except Exception as e:  # whatever the library", "except OSError as e:  # whatever the library",
     "naming_it_and_early"),
    (P, "a model that is no causal LM is trained with a made-up head",
     "if config.architectures and not is_causal_lm(config):", "if False:", "naming_it_and_early"),
    (P, "a model folder without tokenizer files is not refused up front",
     '(folder and not any(path.glob("tokenizer*"))', "(False", "naming_it_and_early"),
    (P, "quantile_index ignores the PRM config's quantile",
     "tau = prm.default_tau if prm.default_tau is not None else prm.taus[0]",
     "tau = prm.taus[0]", "build_prm_reads"),
    (P, "--prm-quantile is checked but column 0 is read", "return prm.taus.index(tau)", "return 0",
     "build_prm_reads"),
    (P, "a --prm-quantile the PRM lacks escapes as a traceback", "if tau not in prm.taus:", "if False:",
     "naming_it_and_early"),
    (P, "build_prm ignores --prm-quantile",
     "prm.q_index = quantile_index(prm, args.prm_quantile)", "prm.q_index = quantile_index(prm)",
     "build_prm_reads"),
    # learned PRMs (tiny_task/learned_prm.py)
    (L, "prm_inputs ends one token early",
     "ends.append(len(ids) - 1)", "ends.append(len(ids) - 2)", "prm_inputs or learned_prms or two_class"),
    (L, "ModelPRM reads the token before each step's end",
     "at = h[row, [e for e in ends if e < self.max_len]]",
     "at = h[row, [e - 1 for e in ends if e < self.max_len]]",
     "learned_prms or two_class"),
    (L, "steps past the PRM's context are read at its last token",
     "at = h[row, [e for e in ends if e < self.max_len]]", "at = h[row, [min(e, self.max_len - 1) for e in ends]]",
     "learned_prms"),
    (L, "a step-tag PRM reads p(bad)",
     "z[:, self.good_bad].softmax(-1)[:, :1]", "z[:, self.good_bad].softmax(-1)[:, 1:]", "step_tag_prm_reads"),
    (L, "a two-class PRM reads the other label",
     "z.softmax(-1)[:, [self.good]]", "z.softmax(-1)[:, [1 - self.good]]", "two_class_prm_reads"),
    (L, "a label that merely contains a good word counts as good (incorrect, not_good)",
     '_GOOD_LABEL.fullmatch(x.replace("LABEL_", ""))', '_GOOD_LABEL.search(x.replace("LABEL_", ""))',
     "good_label_by_whole_name"),
    (L, "quantiles can cross (no softplus on the increments)",
     "torch.nn.functional.softplus(z[..., 1:])", "z[..., 1:]", "never_crosses"),
    (L, "the config's step tag wins over --prm-tag",
     'self.tag = tag or getattr(config, "progrs_step_tag", "ки")',
     'self.tag = getattr(config, "progrs_step_tag", None) or tag or "ки"', "step_tag_flag_over_the_config"),
    (L, "a step tag or token of several tokens is not refused",
     "if len(ids) != 3 or any(len(i) != 1 for i in ids):", "if len(ids) != 3:", "wrong_tag_or_token"),
    (L, "ModelPRM does not read its config's progrs_quantile",
     'self.default_tau = getattr(config, "progrs_quantile", None)', "self.default_tau = None", "build_prm_reads"),
    # the run folder (tiny_task/run_folder.py)
    (R, "a save killed between the renames is not restored",
     "if old.is_dir() and not final.exists():", "if False:", "killed_between"),
    (R, "a finished save leaves model.old behind",
     "    tmp.rename(final)\n    shutil.rmtree(old, ignore_errors=True)", "    tmp.rename(final)",
     "killed_between"),
    (R, "a failed save (full disk) leaves its half-written model.tmp behind",
     "        shutil.rmtree(tmp, ignore_errors=True)\n        raise ProgrsError", "        raise ProgrsError",
     "full_disk"),
    (R, "a used --out is not refused without --resume", "if used and not resume:", "if False:",
     "killed_with_sigkill"),
    (R, "--out '' is not refused (the run writes into the working folder)",
     'if not out.strip():', "if False:", "naming_it_and_early"),
    (R, "--resume does not compare the flags with the run's config.json",
     'if flag not in RESUME_MAY_CHANGE and value != was:', "if False:",
     "killed_after_a_checkpoint"),
    (R, "--resume of a finished run is not refused", 'if state["step"] >= args.steps:', "if False:",
     "killed_after_a_checkpoint"),
    # the order's random stream acts only once a shuffle of the 5,000 problems runs out, which the resume
    # test's 12 problems never reach: its final comparison of the two runs' last checkpoints notices it
    (P, "--resume: the problem order's random stream is not restored",
     'order_rng.setstate(state["order_rng"])', "pass", "killed_after_a_checkpoint"),
    # planted where no earlier test pointed (a second pass over the whole loop)
    (P, "the problem queue is never consumed (the same prompts every step)",
     "del queue[:args.prompts_per_step]", "pass", "problems_of_a_run"),
    (P, "the training problems are taken in file order, never shuffled",
     "queue.extend(order_rng.sample(range(len(train_set)), len(train_set)))",
     "queue.extend(range(len(train_set)))", "problems_of_a_run"),
    (P, "a biased LM head's bias is dropped from the log-probs",
     "logits = (logits if bias is None else logits + bias.float()) / temperature",
     "logits = logits / temperature", "biased_head"),
    (P, "the tokenizer's own EOS is not a stop token",
     "sorted({tokenizer.eos_token_id, *named}", "sorted({*named}", "tokenizers_eos"),
    (P, "AdamW's default weight decay pulls every weight to zero",
     "lr=args.lr, weight_decay=0.0)", "lr=args.lr)", "zero_advantages"),
    (P, "prompts padded on the right for generation",
     'tokenizer.padding_side = "left"', 'tokenizer.padding_side = "right"', "gets_alone"),
    (P, "a resumed run's KL is to its checkpoint, not the initial model",
     "if state and args.kl_coef:", "if False:",
     "killed_after_a_checkpoint"),
    (P, "the clipped objective takes the max, not the min",
     "per_token = -torch.min(ratio * a,", "per_token = -torch.max(ratio * a,", "ppo_clip or ppo_epoch"),
    (P, "completion texts keep the special tokens (EOS) the mask kept",
     "texts = [tokenizer.decode(c[m], skip_special_tokens=True)",
     "texts = [tokenizer.decode(c[m], skip_special_tokens=False)", "tokenizers_eos"),
    (L, "quantiles are not cumulated (they can cross)",
     "torch.sigmoid(steps.float().cumsum(-1))", "torch.sigmoid(steps.float())", "quantile"),
    (G, "GSM8K's download is checked by its line count only",
     "if (got_lines, got_sha) != (lines, sha):", "if got_lines != lines:", "gsm8k"),
    (T, "the TRL trainer never warns at the dominance bound", "if lam >= bound:", "if False:",
     "trl_trainer_warns"),
    (T, "the TRL trainer's reward columns swapped (b read as the outcome)",
     'local = torch.tensor([s["correct"], s["b"]], dtype=torch.float32).T',
     'local = torch.tensor([s["b"], s["correct"]], dtype=torch.float32).T', "trl_advantages"),
    (T, "every TRL process keeps the first process's advantages",
     "out[\"advantages\"] = adv[rank * n:(rank + 1) * n]", "out[\"advantages\"] = adv[:n]",
     "trl_two_processes"),
    # equivalent on purpose: it cannot change a result, and is expected to survive
    (P, "EQUIVALENT: positions shifted by one for every row (RoPE sees only relative positions)",
     "position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)",
     "position_ids = attention_mask.cumsum(-1).clamp(min=0)", "forward_logprobs or sampling_ignores"),
    (P, "EQUIVALENT: a stopped row is checked again (generate() pads a finished row, and a pad token ends "
        "no line, so it never is)",
     "            if row in self.stopped:\n                continue", "            pass", "completions_end_at or completion_mask"),
]


C = "tiny_task/controls.py"
# Planted where a setting meets its effect (issue: every knob reaches its effect): each is one
# realistic change, written before the tests that now guard them, and run on the whole suite
# (python tiny_task/mutants.py --knobs). No -k selection: nobody pointed at them.
KNOBS = [
    (P, "sampling runs without bf16 autocast while the startup line says bf16",
     "        with amp():\n            seqs = model.generate(", "        with contextlib.nullcontext():\n            seqs = model.generate(", ""),
    (P, "the update's forward runs without bf16 autocast",
     "    with amp():\n        body = model.base_model(", "    with contextlib.nullcontext():\n        body = model.base_model(", ""),
    (P, "the KL reference's log-probs at temperature 1, not the sampling temperature",
     "ref[i] = token_logprobs(ref_model, ids, att, Tp, args.temperature, amp)",
     "ref[i] = token_logprobs(ref_model, ids, att, Tp, 1.0, amp)", ""),
    (P, "--eval-samples 1 runs no sampled evaluation",
     "if args.eval_samples > 0:  # its own", "if args.eval_samples > 1:  # its own", ""),
    (P, "the completion cap one token short of --max-new-tokens",
     "GenerationConfig(max_new_tokens=max_new_tokens,", "GenerationConfig(max_new_tokens=max_new_tokens - 1,", ""),
    (P, "a relative --model path gets the other column of defaults",
     "TINY_TASK in Path(args.model).resolve().parents", "TINY_TASK in Path(args.model).parents", ""),
    (P, "the startup line names a tau the run does not read",
     "tau {prm.taus[prm.q_index]}", "tau {prm.taus[0]}", ""),
    (P, "the PRM is handed no question",
     'prm.score_batch([p["question"] for p in problems], steps)', 'prm.score_batch([""] * len(problems), steps)', ""),
    (P, "--resume accepts a changed --lr",
     'RESUME_MAY_CHANGE = ("--steps", "--device", "--out", "--resume")',
     'RESUME_MAY_CHANGE = ("--steps", "--device", "--out", "--resume", "--lr")', ""),
    (P, "a checkpoint replaced by delete-then-rename (no whole checkpoint in between)",
     "        final.rename(old)", "        shutil.rmtree(final)", ""),
    (P, "--out with missing parent folders fails",
     "        out_dir.mkdir(parents=True, exist_ok=True)", "        out_dir.mkdir(exist_ok=True)", ""),
    (P, "an unwritable --out fails only at its first write, after the model loads",
     "        tempfile.TemporaryFile(dir=out_dir).close()", "        pass", ""),
    (P, "the GSM8K cache folder is never created on a fresh machine",
     "        path.parent.mkdir(parents=True, exist_ok=True)\n        part.write_bytes", "        part.write_bytes", ""),
    (P, "a killed GSM8K download is trusted later (written in place, not moved whole)",
     "        part.write_bytes(data)\n        part.replace(path)", "        path.write_bytes(data)", ""),
    (P, "a learned quantile PRM's columns read in reverse order",
     "        return quantiles_from_logits(z)", "        return quantiles_from_logits(z).flip(-1)", ""),
    (P, "a PRM checkpoint without its classification head is accepted",
     'elif set(info["missing_keys"]) - body:', "elif False:", ""),
    (P, "--eval-batch is ignored (every problem in one generate call)",
     "chunk = max(1, args.eval_batch // n)", "chunk = len(problems)", ""),
    (P, "--lam-var does not reach the coherence score",
     "coherence_score(column, lam_var=lam_var)", "coherence_score(column)", ""),
    (P, "--chat does not reach evaluation's prompts",
     'build_prompt(p["question"], tokenizer, args.chat) for p in part', 'build_prompt(p["question"], tokenizer, False) for p in part', ""),
    (P, "--max-grad-norm is ignored (clipped at 1)",
     "clip_grad_norm_(model.parameters(), args.max_grad_norm)", "clip_grad_norm_(model.parameters(), 1.0)", ""),
    (P, "--save-every is ignored (checkpoints at --eval-every)",
     "if step % args.save_every == 0", "if step % args.eval_every == 0", ""),
    (C, "the shuffle control draws the same permutations whatever --seed",
     "torch.Generator().manual_seed(args.seed)", "torch.Generator().manual_seed(0)", ""),
    (T, "a TRL process finds its slice by its index on its node",
     "n, rank = len(inputs), self.accelerator.process_index", "n, rank = len(inputs), self.accelerator.local_process_index", ""),
    (T, "TRL prompts are never templated",
     'progrs.build_prompt(p["question"], tokenizer, chat)', 'progrs.build_prompt(p["question"], tokenizer, False)', ""),
    (T, "TRL centres this process's scores only, before any gather",
     "self._progrs_scores = gather(local.to(self.accelerator.device))", "self._progrs_scores = local.to(self.accelerator.device)", ""),
    (T, "a second scaling on top of progrs's advantages",
     'out["advantages"] = adv[rank * n:(rank + 1) * n]', 'out["advantages"] = adv[rank * n:(rank + 1) * n] / (adv.std() + 1e-4)', ""),
]

SKIP = None  # --skip


def run_one(i, mutant, tests, full, timeout):
    path, desc, old, new, k = mutant
    source = (ROOT / path).read_text() if path else ""
    n = source.count(old) if old else 1                 # no original text: the unmutated files
    if n != 1:
        return i, "stale" if n == 0 else "ambiguous", 0.0, ""
    with tempfile.TemporaryDirectory(prefix=f"mutant{i}_") as tmp:
        tmp = Path(tmp)
        shutil.copy(ROOT / "progrs.py", tmp / "progrs.py")
        shutil.copy(tests, tmp / "test_progrs.py")
        # a copy, not a link: its files import progrs from the folder above them, and the defaults
        # follow the --model path (a link would resolve outside the temporary folder)
        shutil.copytree(ROOT / "tiny_task", tmp / "tiny_task", ignore=shutil.ignore_patterns("__pycache__"))
        if old:
            (tmp / path).write_text(source.replace(old, new))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "test_progrs.py"]
        t0 = time.time()
        try:
            select = ["-k", f"not ({SKIP})"] if full and SKIP else [] if full else ["-k", k]
            proc = subprocess.run(cmd + select, cwd=tmp, capture_output=True, text=True,
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
    p.add_argument("--knobs", action="store_true", help="the KNOBS table (always the whole suite)")
    p.add_argument("--tests", help="another test file (an earlier test_progrs.py, say)")
    p.add_argument("--skip", help="with --full: a pytest -k expression of tests to leave out")
    p.add_argument("--baseline", action="store_true", help="first run the unmutated files on each selection")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per mutant")
    a = p.parse_args()
    global MUTANTS
    if a.knobs:
        MUTANTS, a.full = KNOBS, True
    tests = Path(a.tests) if a.tests else ROOT / "test_progrs.py"
    global SKIP
    SKIP = a.skip
    chosen = [int(x) for x in a.only.split(",")] if a.only else range(1, len(MUTANTS) + 1)
    if a.baseline:
        ks = " or ".join(f"({MUTANTS[i - 1][4]})" for i in chosen)
        _, status, secs, tail = run_one(0, ("", "baseline", "", "", ks), tests, a.full, a.timeout * 4)
        print(f"baseline (unmutated, the union of the selections): {status}, {tail} [{secs:.0f}s]", flush=True)
        if status != "survived":  # "survived" here means every selected test passed
            sys.exit("the unmutated files fail their own selection: fix that first")
    print(f"{'#':>3}  {'result':<9} {'secs':>5}  file: mutant  [tests: -k]", flush=True)
    results = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_one, i, MUTANTS[i - 1], tests, a.full, a.timeout) for i in chosen]
        for f in concurrent.futures.as_completed(futures):
            i, status, secs, tail = f.result()
            results[i] = status
            path, desc, _, _, k = MUTANTS[i - 1]
            print(f"{i:>3}  {status:<9} {secs:5.0f}  {Path(path).name}: {desc}  [{'all' if a.full else k}]",
                  flush=True)
    if len(results) > 1:
        print("\nin order: " + " ".join(f"{i}:{results[i]}" for i in sorted(results)))
    counts = {s: sum(v == s for v in results.values()) for s in sorted(set(results.values()))}
    equivalent = [i for i in results if MUTANTS[i - 1][1].startswith("EQUIVALENT")]
    real = [i for i in results if i not in equivalent]
    print(f"\ncaught {sum(results[i] == 'caught' for i in real)} of {len(real)} mutants that can change a "
          f"result; {sum(results[i] == 'survived' for i in equivalent)} of {len(equivalent)} equivalent ones "
          f"survived, as they should; all results: {counts}")
    missed = [i for i in real if results[i] != "caught"]
    if missed:
        print("not caught: " + ", ".join(f"#{i} {results[i]} ({MUTANTS[i - 1][1]})" for i in sorted(missed)))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
