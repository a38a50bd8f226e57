#!/usr/bin/env bash
# The demo of the README: synthetic MURA root -> train two member bundles briefly -> fit the
# ensemble on the valid split -> evaluate it (metrics + report.html) -> score a DICOM study with
# heatmaps, a DICOM SR and secondary captures -> run the DICOM listener beside Orthanc (the PACS)
# and push a study with dcmtk's storescu. Run it through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# relative to the repository (as the Makefile passes it) or absolute: made absolute here, once
DEMO_DIR=${DEMO_DIR:-demo}
mkdir -p "$DEMO_DIR" && DEMO_DIR=$(cd "$DEMO_DIR" && pwd)
PATIENTS=${DEMO_PATIENTS:-200}
EPOCHS=${DEMO_EPOCHS:-4}
SIZE=${DEMO_IMAGE_SIZE:-128}
ROOT="$DEMO_DIR/mura"
DICOM="$DEMO_DIR/dicom"
MODELS="$DEMO_DIR/models"
EVAL="$DEMO_DIR/eval"
ENSEMBLE="$PWD/bundles/ensemble"
MEMBERS=(densenet169_wbce resnet50)

echo "== 1/6 synthetic MURA root: $PATIENTS patients -> $ROOT (DICOM copies in $DICOM)"
rm -rf "$ROOT" "$DICOM" "$DEMO_DIR/out" && mkdir -p "$DEMO_DIR"
mura-monai synth "$ROOT" --patients "$PATIENTS" --seed 0 --dicom "$DICOM" > "$DEMO_DIR/synth_summary.json"

for member in "${MEMBERS[@]}"; do
    echo "== 2/6 train $member from scratch: $EPOCHS epochs at ${SIZE}px, batch 16, lr 1e-3, no rotation (python -m monai.bundle run training)"
    start=$(date +%s)
    (cd "bundles/$member" && python -m monai.bundle run training \
        --meta_file configs/metadata.json --config_file configs/train.json \
        --dataset_dir "$ROOT" --ckpt_dir "$MODELS/$member" --output_dir "$EVAL/$member/train" \
        --image_size "$SIZE" --max_epochs "$EPOCHS" --batch_size 16 --learning_rate 0.001 --rotate_range 0 2>&1 \
        | grep -E "Key metric|Epoch\[[0-9]+\] Complete" | grep -v Evaluator || true)
    test -f "$MODELS/$member/model.pt"
    echo "   trained in $(( $(date +%s) - start )) s"
done

echo "== 3/6 fit the ensemble on the valid split (members and combination chosen by out-of-fold study AUC, thresholds per body part)"
mura-monai fit-ensemble --bundle "$ENSEMBLE" --dataset-dir "$ROOT" --members-models-dir "$MODELS" --models-dir "$MODELS/ensemble"
echo "   exporting the members (TorchScript and ONNX, each checked against its checkpoint): inference then runs on ONNX Runtime"
mura-monai export --bundle "$ENSEMBLE" --members-models-dir "$MODELS" --models-dir "$MODELS/ensemble"

echo "== 4/6 evaluate the ensemble and its members on the valid split"
mura-monai evaluate --bundle "$ENSEMBLE" --members-models-dir "$MODELS" --models-dir "$MODELS/ensemble" \
    --dataset-dir "$ROOT" --output-dir "$EVAL/ensemble" 2>/dev/null | tail -4
python - "$EVAL/ensemble/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
ens = m["ensemble"]
chosen = ens.get("chosen") or f"{ens['combine']} of {'+'.join(ens.get('members_used', m['members']))}"
calibration = "uncalibrated" if ens["calibration"] == "none" else f"{ens['calibration']} calibration"
print(f"   ensemble ({chosen}, {calibration}) study AUC {m['study']['auc']:.3f}"
      f"{' out of fold' if m.get('cross_fitted') else ''}; members alone: " + ", ".join(
    f"{name} {block['study']['auc']:.3f}" for name, block in m["members"].items()))
if ens.get("selection"):
    print(f"   why: {ens['selection']['reason']}")
PY

echo "== 5/6 score one synthetic DICOM study: JSON, heatmaps, DICOM SR + secondary captures"
STUDY=$(dirname "$(find "$DICOM/valid" -name '*.dcm' | sort | head -1)")
mura-monai infer --bundle "$ENSEMBLE" --members-models-dir "$MODELS" --models-dir "$MODELS/ensemble" "$STUDY" \
    --output "$DEMO_DIR/out/infer.json" --heatmaps "$DEMO_DIR/out/heatmaps" --dicom-out "$DEMO_DIR/out/dicom"
python - "$DEMO_DIR/out/infer.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["studies"]:
    flag = " (uncertain)" if s["uncertain"] else ""
    print(f"   study {s['study']}: {s['body_part']} p(abnormal)={s['probability']:.3f} vs threshold {s['threshold']:.3f} "
          f"({s['operating_point']}) -> {'ABNORMAL' if s['abnormal'] else 'normal'}{flag}, {len(s['images'])} images")
PY
echo "== 6/6 the listener: Orthanc as the PACS, mura-listener with the ensemble, storescu as the modality"
python scripts/demo_listener.py "$DEMO_DIR" "$MODELS" "$STUDY"
echo
echo "Files:"
echo "   MURA root        $ROOT"
echo "   DICOM studies    $DICOM"
echo "   checkpoints      $MODELS/{$(IFS=,; echo "${MEMBERS[*]}"),ensemble}"
echo "   metrics          $EVAL/ensemble/metrics.json"
echo "   report           $EVAL/ensemble/report.html"
echo "   inference JSON   $DEMO_DIR/out/infer.json"
echo "   heatmaps         $DEMO_DIR/out/heatmaps"
echo "   DICOM SR + SC    $DEMO_DIR/out/dicom"
