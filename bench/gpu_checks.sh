#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (a lent GPU is a scarce, timed resource):
#   bash bench/gpu_checks.sh OUT_DIR [tests] [throughput] [pretrain] [embed]   (default: all four)
# 1. the CUDA tests (tests/test_cuda.py; they skip on a machine without CUDA);
# 2. bench/train_throughput.py at the default and the paper width, bfloat16 autocast on and off,
#    with and without channels_last_3d, on 4 synthetic volumes rendered here;
# 3. `lesiontrack pretrain` with the paper's model (configs/paper-model.yaml), two epochs of 10
#    steps, patch pairs drawn by 1 (a thread) and by 12 sampler processes (train.sampler_workers);
# 4. the time to embed each volume with that model on the GPU.
# Needs lesiontrack importable (installed, or on PYTHONPATH) and pytest.
set -u
out=${1:?usage: bench/gpu_checks.sh OUT_DIR [tests] [throughput] [pretrain] [embed]}
shift
sections=${*:-tests throughput pretrain embed}
want() { [[ " $sections " == *" $1 "* ]]; }
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

want tests && timeout 150 python3 -m pytest -q -rs tests/test_cuda.py tests/test_model.py 2>&1 | tee "$out/pytest.log"

# 4 volumes (2 subjects, 2 scans each) of the default synthetic data, resampled to 2 mm
for shard in 0 1; do
  python3 -m lesiontrack.cli synth --out-dir "$work/syn" --shard $shard --shard-size 2 > /dev/null &
done
wait
mkdir -p "$work/res"
for f in "$work"/syn/images/*.nii.gz; do
  python3 -m lesiontrack.cli resample --input "$f" --output "$work/res/$(basename "$f")" > /dev/null &
done
wait
ls "$work/res" | tee -a "$out/gpu.txt"

want throughput && timeout 200 python3 bench/train_throughput.py --volumes "$work"/res/*.nii.gz --widths 8 64 --batch 8 --steps 4 \
  --device cuda --out "$out/train_throughput.json" 2>&1 | tee "$out/throughput.log"
want throughput && timeout 120 python3 bench/train_throughput.py --volumes "$work"/res/*.nii.gz --widths 8 64 --batch 8 --steps 4 \
  --device cuda --channels-last --out "$out/train_throughput_channels_last.json" 2>&1 | tee -a "$out/throughput.log"

vols=("$work"/res/*.nii.gz)
for workers in 1 12; do
  want pretrain || want embed || break
  printf 'train:\n  max_epochs: 2\n  steps_per_epoch: 10\n  validation_pairs: 8\n  sampler_workers: %s\n' \
    $workers > "$work/short.yaml"
  echo "sampler_workers $workers" | tee -a "$out/pretrain.log"
  timeout 240 python3 -m lesiontrack.cli pretrain --volumes "${vols[@]:0:3}" --validation "${vols[3]}" \
    --out-dir "$work/model$workers" --config config.yaml --config configs/paper-model.yaml --config "$work/short.yaml" \
    2>&1 | tr '\r' '\n' | grep -v '^ *$' | grep -v '%|' | tail -n 4 | tee -a "$out/pretrain.log"
  cp "$work/model$workers/training_log.tsv" "$out/training_log_workers$workers.tsv" 2>/dev/null
  want pretrain || break
done
want embed && timeout 90 python3 - "$work/model1/checkpoint_latest.pt" "${vols[@]}" <<'PY' 2>&1 | tee "$out/embed.log"
import sys, time, torch
from lesiontrack.io import read_image
from lesiontrack.track.embed import embed_volume, load_model
model, config = load_model(sys.argv[1], "cuda")
for path in sys.argv[2:]:
    image = read_image(path)
    for repeat in range(2):  # the first call warms up cuDNN
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); began = time.perf_counter()
        embed_volume(model, image, tuple(config["window_hu"]), device="cuda")
        torch.cuda.synchronize()
    print(f"{path.rsplit('/', 1)[-1]} size {image.GetSize()} embed {time.perf_counter() - began:.2f} s "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (width {config['model']['width']})")
PY
rm -rf "$work"
