#!/usr/bin/env bash
# Converting a trained mha language model to K=V, and recovering what the conversion loses:
#   1. train the source: mha on a local corpus (tinyshakespeare by default), byte tokenizer, model=tiny;
#   2. convert it without training: W_KV = A·W_K + (1 − A)·W_V for A = 0, 0.1, ..., 1, the least-squares
#      fit and a random W_KV, each evaluated zero-shot (experiment=kv_conversion, quality_vs_alpha.png);
#   3. uptrain the converted model (convert.alpha=fit) for a few steps, with distillation from the source
#      (distill.alpha=0.5) and without (distill.alpha=1: the teacher never runs, plain training), and an
#      mha control trained for the same extra steps from the source (init_from, same variant).
#
#   scripts/kv_conversion.sh [CORPUS] [extra overrides for every run]    (about 10 minutes on a 2-core CPU)
set -euo pipefail
corpus="${1:-../shared/data/tinyshakespeare.txt}"
[ $# -gt 0 ] && shift
if [ ! -e "$corpus" ]; then
  echo "kv_conversion.sh: corpus $corpus not found; pass a .txt file (or a folder of them) as the first argument" >&2
  exit 2
fi
data=(data=text "data.path=$corpus" data.seq_len=128 data.batch_size=32 model=tiny logger=none "$@")

echo "== 1. the source: mha =="
qkvlab train name=kv_source variant=mha train.steps=600 "${data[@]}"
src=$(ls -d outputs/kv_source/mha-text-s0-* | head -n 1)

echo "== 2. zero-shot conversion sweep from $src =="
qkvlab train -m experiment=kv_conversion "init_from=$src" "${data[@]}"
qkvlab compare outputs/kv_conversion

echo "== 3. recovery: 150 more steps, with and without distillation =="
qkvlab train -m name=kv_recovery variant=k_eq_v "init_from=$src" convert.alpha=fit "distill.teacher=$src" \
  distill.alpha=0.5,1.0 train.steps=150 optim.warmup_steps=0 "${data[@]}"
qkvlab train name=kv_recovery variant=mha "init_from=$src" train.steps=150 optim.warmup_steps=0 "${data[@]}"
qkvlab compare outputs/kv_recovery
