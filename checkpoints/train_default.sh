#!/usr/bin/env bash
# Rebuild the shipped default model (checkpoints/default.*) and the figures of its model card.
#
#   bash checkpoints/train_default.sh            # from the project root, with ../shared/data beside it
#
# Steps (each skipped when its output already exists, so a killed run can be started again):
#   1. 16 phantoms (python -m medvision synth) and one store of the 9 real labelled cases + phantoms;
#   2. 3 patient-wise folds over the real cases (phantoms are never held out);
#   3. per fold: train the "real" preset once per seed (SEEDS, default "0 1 2") and once per seed in
#      SPECIALIST_SEEDS (default "0 1") for each subset in SPECIALISTS (default "t1ce", that subset alone)
#      and pack the runs' last epochs into one ensemble
#      (medvision.train.pack_ensemble, float16 weights, the specialists as routes), then score its held-out
#      real cases for all 15 modality subsets and the calibration of its probabilities and uncertainty;
#   4. the final ensemble on all 9 real cases (validation: 3 phantoms), one run per seed, shipped as
#      checkpoints/default.* with the cross-validated means per subset recorded in its metadata;
#   5. the final model on 4 further held-out phantoms, all 15 subsets.
# Each training run takes about 4 minutes with one thread on a 2-core CPU with native bf16 and about
# 10-14 minutes on an AVX2-only one (fp32); there are 5 per fold and 5 for the final ensemble.
set -euo pipefail
PY=${PYTHON:-python}
REAL=${MEDVISION_REAL_DATA:-../shared/data}
OUT=${OUT:-runs/default}
# Phantoms beside the real training cases. 0: on the same 3 folds, training without the 6 phantoms raised
# the cross-validated FLAIR-only WT Dice and the four-modality ET Dice (checkpoints/recipe_study.sh
# real_only; figures in the model card's decision log). 6 gives the earlier mix (about half the slices).
PHANTOMS_IN_TRAINING=${PHANTOMS_IN_TRAINING:-0}
# One training run per seed, averaged: on the same 3 folds the mean of three seeds' probabilities beat
# the runs alone on all-four WT Dice in every held-out case (medvision.train.ensemble_study; model card).
SEEDS=${SEEDS:-0 1 2}
# Specialists: one more run per fold for each subset named, trained on that subset alone (modality dropout 1)
# and packed as the ensemble's route for exactly that input (medvision.models.ensemble). On the same 3 folds
# a network trained on T1ce alone raised the T1ce-only TC Dice far above the all-subset networks' (model
# card). "" packs none.
SPECIALISTS=${SPECIALISTS-t1ce}
# Seeds per specialist, averaged within its route: two T1ce networks (seeds 0 and 1) gave the T1ce-only
# WT / TC / ET 0.520 / 0.448 / 0.431 against 0.511 / 0.431 / 0.443 for seed 0 and 0.417 / 0.326 / 0.195
# for seed 1 alone (model card): one seed is a gamble on which it is. Seed 0's run is only_SUBSET, another
# seed's only_SUBSET_seedS.
SPECIALIST_SEEDS=${SPECIALIST_SEEDS-0 1}
# Larger subsets sent to a specialist without their extra modality: T1 + T1ce, where the all-subset networks
# scored WT / TC / ET 0.153 / 0.190 / 0.241 and the T1ce specialist alone 0.511 / 0.431 / 0.443 (model card).
SUPERSETS=${SUPERSETS-t1+t1ce=t1ce}
# Inputs the general networks predict better without one of their modalities, predicted as the smaller input:
# all four without T1, where the three networks scored WT / TC / ET 0.792 / 0.544 / 0.590 against 0.765 /
# 0.519 / 0.582 with T1 (chosen in each of the 3 folds by nested cross-validation; model card). "" sets none aside.
SET_ASIDE=${SET_ASIDE-flair+t1+t1ce+t2=flair+t1ce+t2}
# torch threads per training run; 1 keeps a run steady on a 2-core machine that does other work too.
THREADS=(); [ -n "${MEDVISION_TRAIN_THREADS:-}" ] && THREADS=(--threads "$MEDVISION_TRAIN_THREADS")
if [ -f "$OUT/fold_0/status.json" ]; then
  # fold_0 is itself a training run: the layout before ensembles, whose scores would be mixed in.
  echo "error: $OUT holds single-run folds from an earlier version; move it aside or set OUT" >&2
  exit 1
fi
mkdir -p "$OUT"

if [ ! -f data/phantoms_default/.done ]; then
  $PY -m medvision synth --out data/phantoms_default --cases 20 --seed 0 --no-progress
  touch data/phantoms_default/.done
fi
STORE=data/default_mix.h5
if [ ! -f "$STORE" ]; then
  $PY -m medvision prepare "$REAL/brats2018_dev" "$REAL/brats2021_00006" data/phantoms_default \
    --out "$STORE" --no-progress
fi
# Phantoms 0-5 train, 14-16 validate the final run, 17-19 are the synthetic held-out cases of the card.
if [ ! -f "$OUT/folds/fold_0.json" ]; then
  $PY -m medvision folds "$STORE" -k 3 --seed 0 --train-only 'Synth_*' \
    --out "$OUT/folds"
  $PY - "$OUT/folds" "$PHANTOMS_IN_TRAINING" <<'PY'
import json, pathlib, sys
folder, n_phantoms = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for path in sorted(folder.glob("fold_*.json")):
    fold = json.loads(path.read_text())
    # The held-out phantoms are in no fold; phantoms 0 .. n-1 train beside the real cases.
    fold["train"] = [c for c in fold["train"] if not c.startswith("Synth_") or int(c[6:]) < n_phantoms]
    path.write_text(json.dumps(fold, indent=2))
real = sorted({c for p in folder.glob("fold_*.json") for c in json.loads(p.read_text())["val"]})
phantoms = [f"Synth_{i:03d}" for i in range(20)]
final = {"train": real + phantoms[:n_phantoms], "val": phantoms[14:17], "test": phantoms[17:]}
(folder / "final.json").write_text(json.dumps(final, indent=2))
PY
fi

# One training run per seed ("$OUT/fold_k/seed_s"), packed into the fold's ensemble checkpoint
# ("$OUT/fold_k/checkpoints/last.*", float16 weights as shipped), which every later step scores.
train_members() {  # train_members SPLIT_FILE FOLDER: one run per seed in FOLDER/seed_s, then the pack
  local split=$1 folder=$2 members=() seed run
  for seed in $SEEDS; do
    run="$folder/seed_$seed"
    if [ ! -f "$run/checkpoints/last.safetensors" ] || ! grep -q '"finished"' "$run/status.json"; then
      local resume=(); [ -f "$run/train_state.pt" ] && resume=(--resume)
      $PY -m medvision train --data "$STORE" --run-dir "$run" --preset real --seed "$seed" \
        --split-file "$split" "${THREADS[@]}" "${resume[@]}"
    fi
    members+=("$run/checkpoints/last.safetensors")
  done
  local routes=() subset
  for subset in $SPECIALISTS; do
    for seed in $SPECIALIST_SEEDS; do
      run="$folder/only_$subset"; [ "$seed" = 0 ] || run="$folder/only_${subset}_seed$seed"
      if [ ! -f "$run/checkpoints/last.safetensors" ] || ! grep -q '"finished"' "$run/status.json"; then
        local resume=(); [ -f "$run/train_state.pt" ] && resume=(--resume)
        $PY -m medvision train --data "$STORE" --run-dir "$run" --preset real --seed "$seed" \
          --split-file "$split" --modality-dropout 1.0 --modality-subsets "$subset" "${THREADS[@]}" "${resume[@]}"
      fi
      routes+=(--route "$subset=$run/checkpoints/last.safetensors")
    done
  done
  local supersets=() item
  for item in $SUPERSETS; do
    # Only for a specialist that is packed: with SPECIALISTS="" no superset is routed either.
    case " $SPECIALISTS " in *" ${item#*=} "*) supersets+=(--route-superset "$item") ;; esac
  done
  for item in $SET_ASIDE; do supersets+=(--route-superset "$item"); done
  # One network alone is copied as it is: it has no routes.
  [ $(( ${#members[@]} + ${#routes[@]} / 2 )) -gt 1 ] || supersets=()
  if ! $PY - "$folder/checkpoints/last.json" "$(( ${#members[@]} + ${#routes[@]} / 2 ))" "${supersets[@]}" <<'PY'
import json, sys
from medvision.data.modality_sets import parse_subset, subset_name
# The pack exists, has as many members as seeds and specialists and predicts the same supersets as smaller
# inputs (an older layout or another SET_ASIDE does not).
try:
    meta = json.load(open(sys.argv[1]))
except OSError:
    raise SystemExit(1)
wanted = dict(a.partition("=")[::2] for a in sys.argv[3:] if a != "--route-superset")
wanted = {subset_name(parse_subset(k)): subset_name(parse_subset(v)) for k, v in wanted.items()}
model = meta.get("model", {})
same = model.get("members", 1) == int(sys.argv[2]) and model.get("route_supersets", {}) == wanted
raise SystemExit(0 if same else 1)
PY
  then
    # A new pack makes every figure scored with the old one stale.
    rm -f "$folder/calibration.json" "$folder"/cv_subsets_clean.* "$folder"/synthetic_subsets_clean.* \
      "$OUT"/postprocess_study.*
    if [ $(( ${#members[@]} + ${#routes[@]} / 2 )) -gt 1 ]; then
      $PY -m medvision.train.pack_ensemble "$folder/checkpoints/last" "${members[@]}" "${routes[@]}" \
        "${supersets[@]}" --half
    else
      mkdir -p "$folder/checkpoints"
      cp "${members[0]}" "$folder/checkpoints/last.safetensors"
      cp "${members[0]%.safetensors}.json" "$folder/checkpoints/last.json"
    fi
  fi
}

for fold in 0 1 2; do
  run="$OUT/fold_$fold"
  train_members "$OUT/folds/fold_$fold.json" "$run"
  # MC dropout runs one member per pass (medvision.models.ensemble): 6 passes weigh 3 members equally.
  if [ ! -f "$run/calibration.json" ]; then
    $PY -m medvision.train.calibration "$run/checkpoints/last.safetensors" "$STORE" --split val \
      --mc-samples 6 --out "$run/calibration.json"
  fi
done

# Post-processing by nested cross-validation on the folds' held-out probabilities (kept in the cache),
# then every subset scored per fold with the clean-up it chose.
if [ ! -f "$OUT/postprocess_study.json" ]; then
  $PY -m medvision.train.postprocess_study "$STORE" "$OUT"/fold_0 "$OUT"/fold_1 "$OUT"/fold_2 \
    --cache "$OUT/heldout_probabilities" --out "$OUT/postprocess_study.json" > "$OUT/postprocess_study.txt"
fi
FRACTION=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen']['variant']['min_fraction'])" \
  "$OUT/postprocess_study.json")
for fold in 0 1 2; do
  run="$OUT/fold_$fold"
  if [ ! -f "$run/cv_subsets_clean.json" ]; then
    $PY -m medvision evaluate --checkpoint "$run/checkpoints/last.safetensors" --data "$STORE" \
      --split val --modalities subsets --min-component-fraction "$FRACTION" \
      --out "$run/cv_subsets_clean.json" > "$run/cv_subsets_clean.txt"
  fi
done

run="$OUT/final"
train_members "$OUT/folds/final.json" "$run"
if [ ! -f "$run/synthetic_subsets_clean.json" ]; then
  $PY -m medvision evaluate --checkpoint "$run/checkpoints/last.safetensors" --data "$STORE" \
    --split test --modalities subsets --min-component-fraction "$FRACTION" \
    --out "$run/synthetic_subsets_clean.json" > "$run/synthetic_subsets_clean.txt"
fi
# Ship the final ensemble as checkpoints/default.*, with the cross-validated means per subset in its
# metadata (the Predict page shows the row of the modalities a user gave); the first member's training
# log goes to checkpoints/default_run (the Models page draws its curves).
cp "$run/checkpoints/last.safetensors" checkpoints/default.safetensors
first=$(printf '%s\n' $SEEDS | head -n 1)
mkdir -p checkpoints/default_run
cp "$run/seed_$first/metrics.jsonl" "$run/seed_$first/config.json" checkpoints/default_run/
$PY - "$run/checkpoints/last.json" checkpoints/default.json <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["weights_file"] = "default.safetensors"
json.dump(meta, open(sys.argv[2], "w"), indent=2)
PY
$PY -m medvision.train.model_card "$OUT"/fold_*/cv_subsets_clean.json --into checkpoints/default.json \
  > "$OUT/cv_table.md"
$PY -m medvision.train.postprocess_study "$STORE" "$OUT"/fold_0 "$OUT"/fold_1 "$OUT"/fold_2 \
  --cache "$OUT/heldout_probabilities" --into checkpoints/default.json > /dev/null
$PY -m medvision.train.model_card "$run/synthetic_subsets_clean.json" > "$OUT/synthetic_table.md"
echo "done: checkpoints/default.safetensors; tables in $OUT/cv_table.md and $OUT/synthetic_table.md"
