#!/usr/bin/env bash
# The study's digit-task table ("Do Transformers Need Three Projections?"), run twice: with the study's
# PyTorch default initialisation and with qkvlab's GPT-2 initialisation, so a reader sees how much of a
# variant's "failure" is the variant and how much is optimisation. Model and recipe: experiment=study_digits.
#
#   scripts/reproduce_digits.sh            the full table: 6 variants x 5 tasks x 2 lengths x 3 seeds,
#                                          x 2 initialisations = 360 runs (about 26 hours on a 2-core CPU)
#   scripts/reproduce_digits.sh --quick    reverse at length 64, seed 0, mha / q_eq_k_eq_v / q_eq_k_eq_v_plus:
#                                          6 runs (about 17 minutes on a 2-core CPU)
#   scripts/reproduce_digits.sh [--quick] hydra/launcher=joblib ...   extra overrides go to every sweep
#
# Each initialisation is its own study (outputs/study_digits_pytorch, outputs/study_digits_gpt2); the
# script ends with `qkvlab compare` on each, which prints the table and writes compare.csv and the
# per-task accuracy table. A re-run skips the runs that completed and resumes the rest.
set -euo pipefail
quick=()
if [ "${1:-}" = "--quick" ]; then
  shift
  quick=(variant=mha,q_eq_k_eq_v,q_eq_k_eq_v_plus data=reverse data.seq_len=64 seed=0)
fi
for init in pytorch gpt2; do
  echo "== model.init=$init =="
  qkvlab train -m experiment=study_digits model.init="$init" name="study_digits_$init" "${quick[@]}" "$@"
done
for init in pytorch gpt2; do
  echo
  echo "== the digit table, model.init=$init (outputs/study_digits_$init) =="
  qkvlab compare "outputs/study_digits_$init"
done
