#!/usr/bin/env bash
# One recipe change against the default model, on the same 3 patient-wise folds (run after
# checkpoints/train_default.sh, whose store and folds it reuses):
#
#   bash checkpoints/recipe_study.sh NAME [--real-only] [-- TRAIN_ARGS...]
#   bash checkpoints/recipe_study.sh patch128 -- --patch-size 128 128 --batch-size 5
#   bash checkpoints/recipe_study.sh real_only --real-only
#   bash checkpoints/recipe_study.sh distill -- --distill-from runs/default/fold_{fold}/checkpoints/last.safetensors
#
# "{fold}" in TRAIN_ARGS becomes the fold's number (a teacher per fold: one trained on that fold's cases only).
# Each fold trains the "real" preset with TRAIN_ARGS added, then scores its held-out real cases with the
# default model's clean-up for the four subsets the goals name. The table (same layout as the model card's)
# goes to runs/recipe/NAME/cv_table.md; compare it with runs/default/cv_table.md. Killed runs resume.
#
# FOLDS="0 1" picks the folds this call trains (default all three), so that two calls with one torch thread
# each (MEDVISION_TRAIN_THREADS=1) can share a 2-core machine; the table is written once every fold is scored.
# The clean-up is the one the fold study chose (runs/default/postprocess_study.json) or, without that study
# in this checkout, the one recorded in checkpoints/default.json (the same choice, shipped with the model).
set -euo pipefail
PY=${PYTHON:-python}
NAME=${1:?usage: recipe_study.sh NAME [--real-only] [-- TRAIN_ARGS...]}; shift
REAL_ONLY=0
if [ "${1:-}" = "--real-only" ]; then REAL_ONLY=1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
EXTRA=("$@")
BASE=${BASE:-runs/default}
STORE=${STORE:-data/default_mix.h5}
OUT=runs/recipe/$NAME
THREADS=(); [ -n "${MEDVISION_TRAIN_THREADS:-}" ] && THREADS=(--threads "$MEDVISION_TRAIN_THREADS")
# SUBSETS="t1ce" scores only the subsets named (a specialist for one subset is scored on that one).
SUBSETS=${SUBSETS:-flair+t1+t1ce+t2 flair t1ce flair+t1ce}
FOLDS=${FOLDS:-0 1 2}
if [ -f "$BASE/postprocess_study.json" ]; then
  FRACTION=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen']['variant']['min_fraction'])" \
    "$BASE/postprocess_study.json")
else
  FRACTION=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['postprocess']['min_component_fraction'])" \
    checkpoints/default.json)
fi
mkdir -p "$OUT/folds"
printf '%s\n' "real_only=$REAL_ONLY" "train_args=${EXTRA[*]:-}" > "$OUT/recipe.txt"

for fold in $FOLDS; do
  split="$OUT/folds/fold_$fold.json"
  if [ ! -f "$split" ]; then
    $PY - "$BASE/folds/fold_$fold.json" "$split" "$REAL_ONLY" <<'PY'
import json, sys
fold = json.load(open(sys.argv[1]))
if sys.argv[3] == "1":
    fold["train"] = [case for case in fold["train"] if not case.startswith("Synth_")]
json.dump(fold, open(sys.argv[2], "w"), indent=2)
PY
  fi
  run="$OUT/fold_$fold"
  if [ ! -f "$run/checkpoints/last.safetensors" ] || ! grep -q '"finished"' "$run/status.json"; then
    resume=(); [ -f "$run/train_state.pt" ] && resume=(--resume)
    fold_args=("${EXTRA[@]//\{fold\}/$fold}")
    $PY -m medvision train --data "$STORE" --run-dir "$run" --preset real --split-file "$split" \
      "${THREADS[@]}" "${resume[@]}" "${fold_args[@]}"
  fi
  if [ ! -f "$run/cv_goal_subsets.json" ]; then
    $PY -m medvision evaluate --checkpoint "$run/checkpoints/last.safetensors" --data "$STORE" \
      --split val --modalities "$SUBSETS" --min-component-fraction "$FRACTION" \
      --out "$run/cv_goal_subsets.json" > "$run/cv_goal_subsets.txt"
  fi
done
for fold in 0 1 2; do
  if [ ! -f "$OUT/fold_$fold/cv_goal_subsets.json" ]; then
    echo "fold $fold of $NAME is not scored yet: the table is written once all three are"; exit 0
  fi
done
$PY -m medvision.train.model_card "$OUT"/fold_*/cv_goal_subsets.json > "$OUT/cv_table.md"
cat "$OUT/cv_table.md"
