#!/usr/bin/env bash
# Generated mutants (mutmut 3) of progrs.py's model-free functions, killed by the model-free tests;
# with the argument `update`, of the rollout and update code (the mask, log-probs, the loss and the
# optimizer step), killed by the tests that run them on the tiny model; with `loop`, of the training
# loop, the loaders and main, killed by whichever tests reach them.
# Test-only extra: pip install "mutmut>=3.8,<4". Usage: bash tiny_task/mutation.sh [update | loop]
# Works on a copy of the checkout (MUT_DIR, default a new temp folder), never on the checkout itself.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${MUT_DIR:-$(mktemp -d)}
mkdir -p "$work"
tar -C "$root" --exclude=./.git --exclude=./out --exclude=./mutants --exclude=__pycache__ -cf - . | tar -C "$work" -xf -
cd "$work"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # mutmut limits CPU time: one thread per test run
# the functions under test (ToyPRM: all its methods)
functions="outcome_conditioned_centering group_normalize compute_advantages max_dominant_lam
  dominance_violations coherence_score fluent_failures find_answer _closed_boxes extract_answer
  answers_match _clean_answer is_correct split_steps safe_eval _lhs_before check_equations check_args
  apply_defaults load_problems record_problem parse_gold step_metrics rollout_metrics score_completions"
# test_progrs.py's tests that load no model (seconds)
pure="centering_incorrect or centering_preserves or centering_ignores or centering_rows or
  centering_all_incorrect or centering_keeps or doctests_in_progrs or uniform_rows or progrs_dominance or
  absolute_blend or wrong_rollout_tied or all_incorrect_row or strict_reading or max_dominant_lam or
  is_correct or extract_answer or find_answer_marks or gsm8k_rationales or split_steps_drops or
  check_equations or toy_prm_true or toy_prm_blind or prose_steps or coherence or adversarial_corpus or
  scoring_raises or rewards_are_paired or sampled_pass_at_1 or fluent_failure_gauge or evaluation_reports_the_fluent or
  rollout_step_scores or teaching_view or check_args or answers_that_are_not or
  test_outcome_mode_is_grpo_divided_by_the_population_std or
  test_progrs_advantage_is_a_out_plus_lam_times_the_centered_bonus or
  test_strict_mode_centres_the_right_rollouts_among_themselves or
  test_absolute_mode_normalises_r_plus_lam_b or test_group_normalize_uses_its_eps_argument or
  test_group_normalize_works_along_the_last_dim_for_any_leading_shape or
  test_dominance_bound_at_group_size_two or
  test_max_dominant_lam_is_the_smallest_ratio_of_outcome_gap_to_bonus_gap or
  test_max_dominant_lam_is_tight_in_every_mode or test_dominance_violations_counts_pairs_not_rollouts or
  test_step_metrics_counts_dominance_violations_on_a_not_a_out or
  test_unjudged_wrong_rollouts_are_never_fluent_failures or
  test_fluent_failures_reach_the_median_of_the_pool_and_this_batch or
  test_the_trainers_right_b_pool_keeps_only_the_last_fluent_pool_values or
  test_trace_error_rate_is_per_right_answer or
  test_bonus_incorrect_abs_is_the_mean_absolute_bonus_of_wrong_rollouts or
  test_step_metrics_counts_groups_tokens_truncation_and_push or
  test_a_negative_answer_never_matches_a_positive_gold or
  test_a_non_numeric_gold_is_compared_without_dollars_stars_and_a_final_period or
  test_empty_and_blank_only_files_are_refused_naming_the_file or
  test_empty_answers_and_non_finite_numbers_are_refused_naming_file_and_line or
  test_a_byte_order_mark_is_accepted_and_questions_and_golds_are_stripped or
  test_load_problems_errors_are_one_line_naming_what_is_wrong or
  test_a_step_with_one_true_and_one_false_equation_is_judged_false or
  test_check_args_refuses_micro_batch_0_negative_seeds_and_non_finite_floats or
  test_apply_defaults_fills_the_named_models_column_and_keeps_what_was_given or
  test_coherence_clamps_scores_to_0_1_and_computes_in_float64 or
  test_plain_braces_are_no_box_and_two_boxes_on_a_line_join_with_a_space or
  test_an_answer_mark_with_only_stars_commits_to_nothing_on_that_line or
  test_find_answer_end_counts_the_newline_only_when_there_is_one or
  test_a_numeric_gold_is_read_without_dollars_commas_and_a_final_period or
  test_safe_eval_reads_unicode_operators_and_refuses_what_is_not_arithmetic or
  test_lhs_before_finds_the_arithmetic_run_that_ends_at_the_equals_sign or
  test_check_equations_needs_an_operator_on_the_left_and_uses_relative_and_absolute_tolerance or
  test_toy_prm_quantiles_are_the_beta_quantiles_with_4_pseudo_counts or
  test_score_completions_trace_errors_steps_judged_and_lam_var or
  test_step_metrics_logs_exactly_these_keys_and_the_float32_mean_b"
classes=(ToyPRM)
if [ "${1:-}" = update ]; then
  functions="completion_mask newline_tokens generate _head_logprobs token_logprobs policy_loss update_policy"
  classes=(StopAtAnswer)
  pure="completion_mask or forward_logprobs or generate_rollouts or same_gradient or one_update_raises or
    completions_end_at or sampling_ignores or supervised_gradient or ppo_clip or k3_kl or bf16_autocast or
    chat_prompts_get or gradient_clipping or each_ppo_epoch or kl_to_the_reference or
    update_reads_log_probs or entropy_is or non_finite_gradient or biased_head or tokenizers_eos or
    gets_alone or trl_dapo_gradient or beyond_the_tokenizer or no_kl_unless or one_completion_token"
elif [ "${1:-}" = loop ]; then
  functions="rollout_step teaching_view train build_prompt check_source from_pretrained is_causal_lm
    pick_device load_model quantile_index build_prm main first_line"
  classes=()
  # every test but those that read progrs.py's text (mutmut rewrites it) or start two processes
  pure="not trl_two_processes and not copy_pasteable and not readme_"
fi
cat > setup.cfg <<CFG
[mutmut]
source_paths = progrs.py
also_copy = tiny_task/
pytest_add_cli_args_test_selection =
    test_progrs.py
    -k
    $(echo $pure)
CFG
# the GSM8K rationales test, when the shared copy is beside the checkout
gsm8k="$root/../shared/data/gsm8k_test.jsonl"
[ -f "$gsm8k" ] && export PROGRS_GSM8K_TEST="$gsm8k"
names=()
for c in "${classes[@]}"; do names+=("progrs.xǁ${c}ǁ*"); done
for f in $functions; do names+=("progrs.x_${f}__mutmut_*"); done
mutmut run --max-children "${MUT_CHILDREN:-2}" "${names[@]}" || echo "mutmut run exited $?"
mutmut results --all true | python3 -c '
import collections, fnmatch, sys
pats, status = sys.argv[1:], collections.Counter()
for line in sys.stdin:
    name, _, state = line.strip().partition(": ")
    if any(fnmatch.fnmatch(name, p) for p in pats):
        status[state] += 1
        if state != "killed": print(state, name)
total, killed = sum(status.values()), status["killed"]
print(dict(status), f"killed {killed}/{total} = {killed / total:.1%}")' "${names[@]}"
echo "copy: $work"
