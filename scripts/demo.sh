#!/usr/bin/env bash
# The demo of the README: synthetic MURA root -> train the DenseNet-169 bundle briefly ->
# evaluate on the valid split -> score a DICOM study. Run it through `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
PATIENTS=${DEMO_PATIENTS:-200}
EPOCHS=${DEMO_EPOCHS:-4}
SIZE=${DEMO_IMAGE_SIZE:-128}
ROOT="$PWD/$DEMO_DIR/mura"
DICOM="$PWD/$DEMO_DIR/dicom"
BUNDLE="$PWD/bundles/densenet169_wbce"
MODELS="$PWD/$DEMO_DIR/models/densenet169_wbce"
EVAL="$PWD/$DEMO_DIR/eval/densenet169_wbce"

echo "== 1/4 synthetic MURA root: $PATIENTS patients -> $ROOT (DICOM copies in $DICOM)"
rm -rf "$ROOT" "$DICOM" && mkdir -p "$DEMO_DIR"
mura-monai synth "$ROOT" --patients "$PATIENTS" --seed 0 --dicom "$DICOM" > "$DEMO_DIR/synth_summary.json"

echo "== 2/4 train densenet169_wbce from scratch: $EPOCHS epochs at ${SIZE}px, batch 16, lr 3e-4 (python -m monai.bundle run training)"
mkdir -p "$MODELS"
start=$(date +%s)
(cd "$BUNDLE" && python -m monai.bundle run training \
    --meta_file configs/metadata.json --config_file configs/train.json \
    --dataset_dir "$ROOT" --ckpt_dir "$MODELS" --output_dir "$EVAL/train" \
    --image_size "$SIZE" --max_epochs "$EPOCHS" --batch_size 16 --learning_rate 0.0003)
echo "   trained in $(( $(date +%s) - start )) s"

echo "== 3/4 evaluate on the valid split"
mura-monai evaluate --bundle "$BUNDLE" --models-dir "$MODELS" --dataset-dir "$ROOT" --output-dir "$EVAL"

echo "== 4/4 score one synthetic DICOM study with mura-monai infer"
STUDY=$(dirname "$(find "$DICOM/valid" -name '*.dcm' | sort | head -1)")
mura-monai infer --bundle "$BUNDLE" --models-dir "$MODELS" "$STUDY" --output "$DEMO_DIR/infer.json"
python - "$DEMO_DIR/infer.json" <<'PY'
import json, sys
for s in json.load(open(sys.argv[1]))["studies"]:
    print(f"   study {s['study']}: {s['body_part']} p(abnormal)={s['probability']:.3f} -> {'ABNORMAL' if s['abnormal'] else 'normal'} ({len(s['images'])} images)")
PY
echo
echo "Files:"
echo "   MURA root        $ROOT"
echo "   DICOM studies    $DICOM"
echo "   checkpoint       $MODELS/model.pt"
echo "   metrics          $EVAL/metrics.json"
echo "   report           $EVAL/report.html"
echo "   inference JSON   $PWD/$DEMO_DIR/infer.json"
echo "   TensorBoard logs $EVAL/train"
