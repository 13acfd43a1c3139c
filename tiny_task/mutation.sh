#!/usr/bin/env bash
# Generated mutants (mutmut 3) of progrs.py's model-free functions, killed by the model-free tests.
# Test-only extra: pip install "mutmut>=3.8,<4". Usage: bash tiny_task/mutation.sh
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
# test_progrs.py's tests that load no model (seconds), and the pending tests
pure="centering_incorrect or centering_preserves or centering_ignores or centering_rows or
  centering_all_incorrect or centering_keeps or doctests_in_progrs or uniform_rows or progrs_dominance or
  absolute_blend or wrong_rollout_tied or all_incorrect_row or strict_reading or max_dominant_lam or
  is_correct or extract_answer or find_answer_marks or gsm8k_rationales or split_steps_drops or
  check_equations or toy_prm_true or toy_prm_blind or prose_steps or coherence or adversarial_corpus or
  scoring_raises or rewards_are_paired or sampled_pass_at_1 or fluent_failure_gauge or evaluation_reports_the_fluent or
  rollout_step_scores or teaching_view or check_args or answers_that_are_not or test_mutants_pending"
cat > setup.cfg <<CFG
[mutmut]
source_paths = progrs.py
also_copy = tiny_task/
pytest_add_cli_args_test_selection =
    test_progrs.py
    tiny_task/test_mutants_pending.py
    -k
    $(echo $pure)
CFG
# the GSM8K rationales test, when the shared copy is beside the checkout
gsm8k="$root/../shared/data/gsm8k_test.jsonl"
[ -f "$gsm8k" ] && export PROGRS_GSM8K_TEST="$gsm8k"
names=(progrs.xǁToyPRMǁ*)
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
