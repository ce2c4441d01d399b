#!/usr/bin/env bash
# The GPU figures in the README, in one go on one CUDA GPU:
#   1. gpt2_124m training MFU, bf16 + torch.compile, for mha / k_eq_v / q_eq_k_eq_v;
#   2. the same in eager mode (compile speed-up; first_step_s holds the compile time);
#   3. model=small step time in fp32 (TF32) against bf16;
#   4. model=small validation loss after a short run, fp32 against bf16;
#   5. the one-tensor decode kernel alone (scripts/bench_gpu_decode.py): checks on the GPU, the launch-plan
#      sweep, per-layer timings against mha's SDPA at 2048 / 8192 / 32768 tokens, batch 1 and 16;
#   6. whole-model decoding at batch 1, gpt2_124m and paper_300m at 2048 / 8192 / 32768 tokens, with the
#      kernel (QKVLAB_DECODE_KERNEL=auto) and without (off);
#   7. bench under torchrun with NCCL (one process per GPU present).
# Usage: scripts/bench_gpu.sh [OUT_DIR]   (default outputs/bench/gpu)
set -uo pipefail
out=${1:-outputs/bench/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
q() { python3 -m qkvlab "$@"; }
GPT2=(model=gpt2_124m data.seq_len=1024 data.batch_size=32 --contexts 1024 --decode-tokens 32 --steps 20 --repeats 3 --warmup 3)

q bench "${GPT2[@]}" --variants mha,k_eq_v,q_eq_k_eq_v train.compile=true --out "$out/gpt2_compile.json"
q bench "${GPT2[@]}" --variants mha,k_eq_v --no-loop --out "$out/gpt2_eager.json"
for p in fp32 bf16; do
  q bench model=small data.seq_len=512 data.batch_size=32 --variants mha,k_eq_v --contexts 512 --steps 20 \
    --repeats 3 --warmup 3 --no-loop train.precision=$p --out "$out/small_$p.json"
done
for p in fp32 bf16; do
  q train model=small data=mqar data.seq_len=256 variant=mha logger=none train.steps=1000 train.precision=$p \
    train.progress=false hydra.run.dir="$out/train_$p"
done
python3 scripts/bench_gpu_decode.py --tune > "$out/decode_tune.txt"
python3 scripts/bench_gpu_decode.py | tee "$out/decode.txt"
for m in gpt2_124m paper_300m; do
  for k in auto off; do
    QKVLAB_DECODE_KERNEL=$k q bench model=$m model.context=32768 --variants mha,k_eq_v --contexts 2048,8192,32768 \
      --train-seq-len 1024 data.batch_size=8 --steps 2 --repeats 3 --warmup 1 --no-loop --decode-tokens 32 \
      --out "$out/decode_${m}_$k.json"
  done
done
torchrun --nproc_per_node="$(python3 -c 'import torch; print(torch.cuda.device_count())')" -m qkvlab bench model=small \
  --variants mha,k_eq_v --contexts 512 --steps 5 --repeats 3 --warmup 1 --out "$out/torchrun_nccl.json"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for p in ("fp32", "bf16"):
    s = json.loads((out / f"train_{p}" / "summary.json").read_text())
    print(f"model=small mqar 1000 steps {p}: val/loss {s['val/loss']:.4f} val/acc {s.get('val/acc', float('nan')):.4f} "
          f"tokens/s {s['throughput/tokens_per_s']:,.0f} precision {s['precision']}")
PY
