#!/usr/bin/env bash
# Do the embedding rows move with the paper-sized model trained longer on a larger corpus? One run
# on a CUDA machine (16 cores): the default run's test pairs tracked with the default run's CPU
# model and with a width-64 model trained here, every embedding row and hybrid, side by side.
#   bash bench/gpu_embedding_rows.sh OUT_DIR CARRIED_DIR
# CARRIED_DIR holds what the default run (`snakemake --cores 2` on config.yaml) made and this run
# does not remake: default/checkpoint_best.pt (its model), calibration.json (its presence
# calibration, results/synthetic/presence/), and optionally registrations/ (its
# results/synthetic/registrations/deformable, else registered here on 16 processes).
# Environment: EXTRA_SUBJECTS (20: training subjects of the extra corpus, seed 100, beside the
# default run's 7), TRAIN_SECONDS (240: the pretraining's wall-clock budget; the last epoch that
# improved the held-out loss is kept), WIDTH (64), DEVICE (cuda), STEPS (40 per epoch), JOBS (16),
# ROWS (the rows beside deformable; default: multiscale and hybrid with the default model, every
# embedding row and hybrid with the large one).
# The training settings are the default run's (config.yaml) but the width, the batch (8), the device
# and the number of steps: the question is the model's size, the corpus and the training length.
# Needs lesiontrack importable (installed, or on PYTHONPATH). On a machine whose Python lacks some
# of lesiontrack's dependencies (the lent H200's image: Python 3.12 with torch, numpy, pandas, scipy),
# bring them as cp312 wheels: SimpleITK, torchio (imported at the first augmentation), nibabel,
# deprecated, jsonschema, referencing, jsonschema-specifications, rpds-py (57 MB in all), then
#   pip install --no-index --no-deps --target /tmp/site WHEELS && PYTHONPATH=/tmp/site:$PWD bash ...
# (bench/device_wheels.sh DIR downloads them at the versions pyproject.toml pins.)
# Measured on an H200 with 16 cores (docs/benchmarks.md): synthesising 12 + 32 subjects 85 s,
# resampling and landmarks 83 s, embedding and registering 43 s, tracking 95 s: with the defaults
# (20 extra subjects, 240 s of training) the run fits one 10-minute call.
set -u
out=${1:?usage: bench/gpu_embedding_rows.sh OUT_DIR CARRIED_DIR}
carried=$(realpath "${2:?usage: bench/gpu_embedding_rows.sh OUT_DIR CARRIED_DIR}")
dataset=()  # DATASET_CONFIG: an overlay for the default dataset (a smaller one to try the script)
[ -n "${DATASET_CONFIG:-}" ] && dataset=(--config "$(realpath "$DATASET_CONFIG")")
extra=${EXTRA_SUBJECTS:-20} seconds=${TRAIN_SECONDS:-240} width=${WIDTH:-64} device=${DEVICE:-cuda}
steps=${STEPS:-40} jobs=${JOBS:-16}
mkdir -p "$out"
out=$(realpath "$out")
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
L="python3 -m lesiontrack.cli"
began=$(date +%s)
stamp() { echo "[$(( $(date +%s) - began )) s] $*" | tee -a "$out/steps.log"; }
# every module the stages import, before minutes of device time go into them
python3 -c "import SimpleITK, torchio, nibabel, jsonschema, torch, pandas, scipy, lesiontrack.cli" 2>&1 |
  tail -n 1 | tee "$out/imports.txt" | grep . && { echo "a dependency is missing: $(cat "$out/imports.txt")"; exit 1; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$out/machine.txt"
nproc | tee -a "$out/machine.txt"

# 1. The default run's dataset (seed 0: training subjects, test subjects) and an extra training
#    corpus from another seed (no subject of it is a test subject), one subject per job.
printf 'synthetic:\n  seed: 100\n  n_train_subjects: %s\n  n_test_subjects: 1\n' "$extra" > "$work/extra.yaml"
shards() { python3 -c "import sys; from lesiontrack import config; from lesiontrack.data import synthetic as s
c = s.SyntheticConfig.from_dict(config.load(sys.argv[1:])['synthetic']); print(len(s.shards(c, 1)))" "$@"; }
n_default=$(shards "${dataset[@]:1}") n_extra=$(shards "$work/extra.yaml")
{ seq 0 $((n_default - 1)) | sed "s|^|default |"; seq 0 $((n_extra - 2)) | sed "s|^|extra |"; } |
  xargs -P "$jobs" -L 1 bash -c 'if [ "$0" = default ]; then c="'"${dataset[*]}"'"; else c="--config '"$work"'/extra.yaml"; fi
    '"$L"' synth $c --out-dir '"$work"'/$0 --shard $1 --shard-size 1 > /dev/null 2>&1 || echo "synth $0 $1 failed"' \
  | tee -a "$out/steps.log"
python3 - "$work/default" <<'PY'
import sys
from pathlib import Path
from lesiontrack.data.synthetic import merge_tables
out = Path(sys.argv[1])
for name in ("images", "lesions", "pairs"):
    merge_tables(sorted((out / "shards").glob(f"{name}-*.csv")), out / f"{name}.csv")
PY
stamp "synthesised $n_default + $((n_extra - 1)) subjects"

# 2. Resampled to 2 mm and landmarks from the label maps, one shard per job.
for set in default extra; do
  for table in "$work/$set"/shards/images-*.csv; do
    k=${table##*images-}; k=${k%.csv}
    echo "$set $k"
  done
done | xargs -P "$jobs" -L 1 bash -c 'd='"$work"'/$0
  '"$L"' resample --images $d/shards/images-$1.csv --out-dir $d/resampled --table $d/shards/resampled-$1.csv > /dev/null 2>&1 &&
  '"$L"' landmarks --backend totalseg --images $d/shards/images-$1.csv --out-dir $d/landmarks --table $d/shards/landmarks-$1.csv > /dev/null 2>&1 ||
  echo "resample/landmarks $0 $1 failed"' | tee -a "$out/steps.log"
stamp "resampled, landmarks"

# 3. Training volumes: the default run's (its last training subject held out for the early stop, as
#    the workflow does) and the extra corpus, whose file names get a prefix (the ids repeat).
mkdir -p "$work/train/volumes" "$work/train/landmarks"
for f in "$work"/extra/resampled/train*.nii.gz; do ln -s "$f" "$work/train/volumes/x100_$(basename "$f")"; done
for f in "$work"/extra/landmarks/train*.csv; do ln -s "$f" "$work/train/landmarks/x100_$(basename "$f")"; done
last=$(ls "$work"/default/resampled/ | grep '^train' | sed 's/_t.*//' | sort -u | tail -n 1)
for f in "$work"/default/resampled/train*.nii.gz; do
  [[ $(basename "$f") == "$last"_* ]] || ln -s "$f" "$work/train/volumes/"
done
validation=("$work"/default/resampled/"$last"_*.nii.gz)
printf 'model:\n  name: large\n  width: %s\ntrain:\n  device: %s\n  threads: %s\n  sampler_workers: %s\n  batch_size: 8\n  max_epochs: 1000\n  patience: 1000\n  steps_per_epoch: %s\n' \
  "$width" "$device" "$jobs" $((jobs * 3 / 4)) "$steps" > "$work/large.yaml"
stamp "training on $(ls "$work/train/volumes" | wc -l) volumes, validation ${#validation[@]} ($last)"
timeout -k 10 "$seconds" $L pretrain --volumes "$work"/train/volumes/*.nii.gz --validation "${validation[@]}" \
  --out-dir "$work/large" --landmarks "$work/train/landmarks" "$work/default/landmarks" \
  --config config.yaml --config "$work/large.yaml" > "$work/pretrain.log" 2>&1
tr '\r' '\n' < "$work/pretrain.log" | grep -v '%|' | grep -v '^ *$' | tail -n 40 > "$out/pretrain.log"
pkill -f "lesiontrack.cli pretrain" 2>/dev/null; sleep 2
cp "$work/large/training_log.tsv" "$out/training_log_large.tsv" 2>/dev/null
[ -f "$work/large/checkpoint_best.pt" ] || { stamp "pretraining failed: $out/pretrain.log"; rm -rf "$work"; exit 1; }
stamp "pretrained: $(($(wc -l < "$work/large/training_log.tsv") - 1)) epochs of $steps steps"

# 4. Embed the test volumes with both models (the default model's rows are recomputed here, in the
#    same run); the registrations: carried, else registered here, one process per image pair.
volumes=("$work"/default/shards/resampled-*.csv)
vol_args=(); for v in "${volumes[@]}"; do vol_args+=(--volumes "$v"); done
test_tables=$(grep -l '^test' "$work"/default/shards/resampled-*.csv | sed 's/^/--images /' | tr '\n' ' ')
$L embed --checkpoint "$carried/default/checkpoint_best.pt" $test_tables --out-dir "$work/emb/default" \
  --device "$device" > /dev/null 2>&1 || echo "embed default failed" | tee -a "$out/steps.log" &
$L embed --checkpoint "$work/large/checkpoint_best.pt" $test_tables --out-dir "$work/emb/large" \
  --device "$device" > /dev/null 2>&1 || echo "embed large failed" | tee -a "$out/steps.log" &
# the test pairs in chunks: by image pair for the registrations, by subject for the trackers
python3 - "$work/default/pairs.csv" "$work/chunks" "$jobs" <<'PY'
import sys
from pathlib import Path
import pandas as pd
pairs = pd.read_csv(sys.argv[1])
pairs = pairs[pairs["split"] == "test"]
out, n = Path(sys.argv[2]), int(sys.argv[3])
for kind, key in (("register", pairs["source_image"] + " " + pairs["target_image"]),
                  ("track", pairs["source_image"].str.split("_").str[0])):
    (out / kind).mkdir(parents=True)
    keys = sorted(set(key))
    for k in range(min(n, len(keys))):
        pairs[key.isin(keys[k::n])].to_csv(out / kind / f"pairs-{k:02d}.csv", index=False)
PY
regs=()
if [ -d "$carried/registrations" ]; then
  regs=(--registrations "$carried/registrations")
else
  for c in "$work"/chunks/register/pairs-*.csv; do
    k=$(basename "$c" .csv)
    $L register --pairs "$c" --method deformable --split test "${vol_args[@]}" --out-dir "$work/regs/$k" \
      --threads 1 > /dev/null 2>&1 || echo "register $k failed" | tee -a "$out/steps.log" &
    regs+=(--registrations "$work/regs/$k")
  done
fi
wait
stamp "embedded, registered"

# 5. Every embedding row and hybrid with each model, deformable once, one process per subject;
#    scored on the same pairs.
track() {  # name method [embeddings]
  local emb=() chunk parts=()
  [ -n "${3:-}" ] && emb=(--embeddings "$3")
  for chunk in "$work"/chunks/track/pairs-*.csv; do
    parts+=("$work/pred/$1.$(basename "$chunk")")
    $L track --pairs "$chunk" --split test --method "$2" "${emb[@]}" "${vol_args[@]}" "${regs[@]}" \
      --presence "$carried/calibration.json" --config config.yaml --threads 1 --out "${parts[-1]}" \
      > "${parts[-1]}.log" 2>&1 || { echo "track $1 failed"; tail -n 3 "${parts[-1]}.log"; } | tee -a "$out/steps.log" &
  done
  wait
  python3 -c "import sys, pandas as pd; pd.concat([pd.read_csv(f) for f in sys.argv[2:]]).to_csv(sys.argv[1], index=False)" \
    "$work/pred/$1.csv" "${parts[@]}" &&
  $L evaluate --predictions "$work/pred/$1.csv" --pairs "$work/default/pairs.csv" --split test \
    --out "$work/metrics/$1.json" --per-pair "$work/metrics/$1-pairs.csv" > /dev/null 2>&1
}
mkdir -p "$work/pred" "$work/metrics"
rows=(deformable)
track deformable deformable &
for row in ${ROWS:-multiscale@default hybrid@default single-scale-fine@large two-scale@large multiscale@large hybrid@large}; do
  track "$row" "${row%@*}" "$work/emb/${row#*@}" &
  rows+=("$row")
done
wait
stamp "tracked"
table_args=()
for r in "${rows[@]}"; do
  [ -f "$work/metrics/$r.json" ] && table_args+=(--method "$r" "$work/metrics/$r.json" "$work/metrics/$r-pairs.csv")
done
# the run's table in the workflow's layout, so that bench/protocol_table.py writes the docs' form
mkdir -p "$work/results/synthetic"
ln -s "$work/metrics" "$work/results/synthetic/metrics"
$L table --dataset synthetic "${table_args[@]}" --reference "hybrid@large" --out-dir "$work/results/tables" \
  > /dev/null 2>&1
python3 "$(dirname "$0")/protocol_table.py" "$work/results" | tee "$out/table.md"
tar -czf "$out/per_pair.tgz" -C "$work/metrics" . 2>/dev/null
stamp "done"
rm -rf "$work"
