#!/usr/bin/env bash
# The README's scaling example: the ladder's three smallest rungs x mha, k_eq_v on tinyshakespeare,
# then `qkvlab scaling`. TPP=20 is the compute-optimal budget (8 to 18 minutes per variant measured on
# 2 cores); the README's plot is this script's output with the defaults.
#   scripts/scaling_cpu.sh [corpus.txt]   env: TPP (default 20), SEEDS (default 0), OUT (default outputs/scaling_cpu)
set -euo pipefail
corpus="${1:-../shared/data/tinyshakespeare.txt}"
tpp="${TPP:-20}"
out="${OUT:-outputs/scaling_cpu}"
qkvlab train -m experiment=scaling_ladder model=ladder_1,ladder_2,ladder_3 variant=mha,k_eq_v \
  "seed=${SEEDS:-0}" "data.path=${corpus}" "train.tokens_per_param=${tpp}" train.device=cpu \
  "hydra.sweep.dir=${out}/runs"
qkvlab scaling "${out}/runs" --out "${out}"
