#!/usr/bin/env bash
# The GPU figures in the README, on one CUDA GPU, in two parts that each end well inside a 10-minute
# slot (what one command may take on a lent GPU machine), the most wanted first, each result written
# to OUT_DIR as soon as it exists, so a run cut short keeps what it finished (at most seven files a part, flat):
#   decode (issue 14's GPU targets):
#     1. the one-tensor decode kernel alone (scripts/bench_gpu_decode.py): checks against PyTorch on
#        the GPU, then per-layer times against mha's SDPA for gpt2_124m- and paper_300m-sized layers at
#        2048, 8192 and 32768 tokens, batch 1 and 16, bytes counted from the shapes;
#     2. whole-model decoding at batch 1, gpt2_124m and paper_300m at 2048 / 8192 / 32768 tokens, with
#        the kernel (QKVLAB_DECODE_KERNEL=auto) and without (off);
#     3. the DRAM bytes each decode step reads, measured by Nsight Compute (ncu) where it is there;
#     4. the kernel's launch-plan sweep.
#   train: gpt2_124m MFU in bf16 with torch.compile for mha / k_eq_v / q_eq_k_eq_v, then eager; fp32
#     (TF32) against bf16 step time at model=small; the validation loss of a 1000-step run in each
#     precision; bench under torchrun with NCCL (one process per GPU present).
# Usage: scripts/bench_gpu.sh [decode|train|all] [OUT_DIR]   (default: all, outputs/bench/gpu)
#   DRY=1 scripts/bench_gpu.sh ...   every command but ncu on the CPU with tiny shapes (Triton's
#                                    interpreter for the kernel): checks the script, times nothing.
# On a machine where hydra does not import (a GPU image with torch and triton only), the wheels that
# scripts/device_wheels.sh put in .whl/ are installed into a temporary folder first.
set -uo pipefail
part=${1:-all}
out=$(realpath -m "${2:-$(dirname "$0")/../outputs/bench/gpu}")
cd "$(dirname "$0")/.."
case "$part" in decode | train | all) ;; *)
  echo "bench_gpu.sh: unknown part '$part'; choose decode, train or all" >&2
  exit 2
  ;;
esac
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "bench_gpu.sh: hydra does not import here and .whl/ holds no wheels; run scripts/device_wheels.sh where pip works and bring .whl/" >&2
    exit 2
  fi
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 2
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
q() { python3 -m qkvlab "$@"; }
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }
failed=()
# A step that fails is named at the end (and the exit status says so); the next steps still run.
check() { [ "$1" = 0 ] || failed+=("$2"); }

if [ "${DRY:-0}" = 1 ]; then
  dry=(--dry-run)
  DECODE_MODELS=(tiny)
  DECODE=(model.context=256 --contexts 64,256 --train-seq-len 64 data.batch_size=2 --steps 1 --repeats 1 --warmup 0 --decode-tokens 4)
  GPT2=(model=tiny data.seq_len=64 data.batch_size=4 --contexts 64 --decode-tokens 4 --steps 1 --repeats 1 --warmup 1)
  SMALL=(model=tiny data.seq_len=64 data.batch_size=4 --contexts 64 --steps 1 --repeats 1 --warmup 1)
  LOSS=(model=tiny data.seq_len=64 train.steps=5)
  NPROC=1
else
  dry=()
  DECODE_MODELS=(gpt2_124m paper_300m)
  DECODE=(model.context=32768 --contexts 2048,8192,32768 --train-seq-len 1024 data.batch_size=8 --steps 2 --repeats 3 --warmup 1 --decode-tokens 32)
  GPT2=(model=gpt2_124m data.seq_len=1024 data.batch_size=32 --contexts 1024 --decode-tokens 32 --steps 20 --repeats 3 --warmup 3)
  SMALL=(model=small data.seq_len=512 data.batch_size=32 --contexts 512 --steps 20 --repeats 3 --warmup 3)
  LOSS=(model=small data.seq_len=256 train.steps=1000)
  NPROC=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi

if [ "$part" != train ]; then
  stamp "decode kernel: checks and per-layer times"
  python3 scripts/bench_gpu_decode.py "${dry[@]}" | tee "$out/decode.txt"
  check $? "decode kernel checks and times"
  for m in "${DECODE_MODELS[@]}"; do
    for k in auto off; do
      stamp "whole-model decoding, model=$m, QKVLAB_DECODE_KERNEL=$k"
      QKVLAB_DECODE_KERNEL=$k q bench model="$m" "${DECODE[@]}" --variants mha,k_eq_v --no-loop --out "$out/decode_${m}_$k.json"
      check $? "decoding $m $k"
    done
  done
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -n 1)
  if [ "${DRY:-0}" != 1 ] && [ -n "$ncu" ]; then
    stamp "decode kernel: DRAM bytes read per step, measured ($ncu)"
    ncsv=$(mktemp) nplan=$(mktemp)
    "$ncu" --profile-from-start off --cache-control all --clock-control none --print-units base --csv \
      --metrics dram__bytes_read.sum,gpu__time_duration.sum --log-file "$ncsv" python3 scripts/bench_gpu_decode.py --ncu >"$nplan" &&
      python3 scripts/bench_gpu_decode.py --ncu-report "$ncsv" "$nplan" | tee "$out/decode_ncu.txt"
    check $? "DRAM bytes (ncu)"
  else
    stamp "no ncu here (or a dry run): bytes per step stay counted, not measured"
  fi
  stamp "decode kernel: launch plans"
  python3 scripts/bench_gpu_decode.py --tune "${dry[@]}" | tee "$out/decode_tune.txt"
  check $? "launch plans"
fi

if [ "$part" != decode ]; then
  runs=$(mktemp -d) # the training runs' folders (checkpoints too): only their summaries go to OUT_DIR
  stamp "gpt2_124m, bf16 + compile"
  q bench "${GPT2[@]}" --variants mha,k_eq_v,q_eq_k_eq_v train.compile=true --out "$out/gpt2_compile.json"
  check $? "gpt2_124m compile"
  stamp "gpt2_124m, eager"
  q bench "${GPT2[@]}" --variants mha,k_eq_v --no-loop --out "$out/gpt2_eager.json"
  check $? "gpt2_124m eager"
  for p in fp32 bf16; do
    stamp "model=small step time, $p"
    q bench "${SMALL[@]}" --variants mha,k_eq_v --no-loop train.precision=$p --out "$out/small_$p.json"
    check $? "model=small $p"
  done
  for p in fp32 bf16; do
    stamp "validation loss after training, $p"
    q train "${LOSS[@]}" data=mqar variant=mha logger=none train.precision=$p train.progress=false hydra.run.dir="$runs/train_$p"
    check $? "training $p"
  done
  stamp "bench under torchrun, $NPROC processes"
  torchrun --nproc_per_node="$NPROC" -m qkvlab bench "${SMALL[@]}" --variants mha,k_eq_v --out "$out/torchrun.json"
  check $? "torchrun"
  python3 - "$runs" <<'PY' | tee "$out/train_loss.txt"
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
for p in ("fp32", "bf16"):
    f = runs / f"train_{p}" / "summary.json"
    if not f.exists():
        print(f"train {p}: no summary.json (the run failed; see above)")
        continue
    s = json.loads(f.read_text())
    print(f"mqar {p}: val/loss {s['val/loss']:.4f} val/acc {s.get('val/acc', float('nan')):.4f} "
          f"tokens/s {s['throughput/tokens_per_s']:,.0f} precision {s['precision']}")
PY
fi
if [ ${#failed[@]} -gt 0 ]; then
  printf -v names '%s; ' "${failed[@]}"
  stamp "done; failed: ${names%; }"
  exit 1
fi
stamp "done"
