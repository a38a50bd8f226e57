"""``mura-monai``: synthetic data, evaluation, inference and comparison from the command line.

Every subcommand exits non-zero with one line naming the bad path or value on bad input; the
traceback is kept for ``--debug``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mura_monai.constants import BACKEND_CHOICES  # torch-free: --help does not load torch

__all__ = ["main"]

logger = logging.getLogger("mura_monai")


# mura_monai.multiview.VIEW_FUSIONS, spelt out so that --help does not import torch
VIEW_FUSION_CHOICES = ("mean", "max", "median", "learned", "early_mean", "early_max")


def _add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKEND_CHOICES,
                        help="what runs the networks: auto takes the fastest export validated against this "
                             "checkpoint, else torch; a backend named here that cannot run is an error "
                             "(default: each bundle's config, auto)")
    parser.add_argument("--onnx-threads", type=int, metavar="N",
                        help="ONNX Runtime's intra-op threads (0: as many as torch uses; default: each bundle's config)")


def _setup_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mura-monai", description="Abnormality detection in musculoskeletal radiographs (MURA), on MONAI."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser("synth", help="write a deterministic synthetic MURA-like root (and DICOM studies)")
    synth.add_argument("out", type=Path, help="folder to create the MURA root in (MURA-v1.1/ goes inside)")
    synth.add_argument("--patients", type=int, default=140, help="number of patients (default 140)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    synth.add_argument("--dicom", type=Path, metavar="DIR", help="also write the studies as DICOM under DIR")
    synth.add_argument("--valid-fraction", type=float, default=0.2, help="share of patients in the valid split")

    infer = sub.add_parser("infer", help="score DICOM or PNG/JPEG radiographs, grouped into studies")
    infer.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    infer.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="files or folders of radiographs")
    infer.add_argument("--output", type=Path, help="write the JSON here (default: print it)")
    infer.add_argument("--models-dir", type=Path, help="checkpoint folder (default: the bundle's models/)")
    infer.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    infer.add_argument("--heatmaps", type=Path, metavar="DIR", help="write CAM heatmap overlays (PNG) here (ensemble bundles)")
    infer.add_argument("--dicom-out", type=Path, metavar="DIR",
                       help="write a DICOM SR and heatmap secondary captures per DICOM study here (ensemble bundles)")
    infer.add_argument("--members-models-dir", type=Path, metavar="DIR",
                       help="ensemble: folder holding one checkpoint folder per member (default: each member's models/)")
    infer.add_argument("--view-fusion", choices=VIEW_FUSION_CHOICES,
                       help="how a study's views make its probability (default: the bundle's aggregation); "
                            "learned reads --view-fusion-file")
    infer.add_argument("--view-fusion-file", type=Path, metavar="JSON",
                       help="fitted learned view fusion: an evaluation's view_fusion.json (default: MODELS_DIR/view_fusion.json)")
    infer.add_argument("--zoom", action="store_true",
                       help="Huschauer's zoom to attention: predict again on the attended region at full resolution")
    _add_backend_options(infer)

    evaluate = sub.add_parser("evaluate", help="evaluate a trained bundle on the valid split of a MURA root")
    evaluate.add_argument("--bundle", type=Path, required=True, help="bundle folder with models/model.pt")
    evaluate.add_argument("--dataset-dir", type=Path, required=True, help="MURA root (the folder holding MURA-v1.1/)")
    evaluate.add_argument("--output-dir", type=Path, required=True, help="where metrics.json and report.html go")
    evaluate.add_argument("--models-dir", type=Path, help="checkpoint folder (default: the bundle's models/)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    evaluate.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    evaluate.add_argument("--sample-heatmaps", type=int, default=4, metavar="N",
                          help="heatmaps of N evaluated studies in the report (default 4; 0 for none)")
    evaluate.add_argument("--members-models-dir", type=Path, metavar="DIR",
                          help="ensemble: folder holding one checkpoint folder per member (default: each member's models/)")
    evaluate.add_argument("--zoom", action="store_true",
                          help="evaluate with Huschauer's zoom to attention, beside the same model without it")
    _add_backend_options(evaluate)

    fit = sub.add_parser("fit-ensemble", help="fit an ensemble's combination, calibration and thresholds on a valid split")
    fit.add_argument("--bundle", type=Path, required=True,
                     help="ensemble bundle folder (configs/inference.json names the members)")
    fit.add_argument("--dataset-dir", type=Path, required=True, help="MURA root whose valid split the ensemble is fitted on")
    fit.add_argument("--models-dir", type=Path, help="where ensemble.json goes (default: the bundle's models/)")
    fit.add_argument("--members-models-dir", type=Path, metavar="DIR",
                     help="folder holding one checkpoint folder per member (default: each member's models/)")
    fit.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    fit.add_argument("--combine", choices=["auto", "mean", "weighted_mean", "vote", "stacking"],
                     help="override the bundle's combine (auto: the members and method with the best out-of-fold study AUC)")
    fit.add_argument("--calibration", choices=["none", "platt", "isotonic"], help="override the bundle's calibration")
    fit.add_argument("--members", metavar="NAME,NAME",
                     help="member bundles instead of the config's (each a folder beside the ensemble bundle); "
                          "ensemble.json records them, so evaluate, infer and the listener then use these")

    compare = sub.add_parser("compare", help="one table of several evaluated bundles (comparison.md, comparison.csv)")
    compare.add_argument("outputs", nargs="+", type=Path, metavar="OUTPUT_DIR",
                         help="evaluation output folders (or their metrics.json files)")
    compare.add_argument("--output-dir", type=Path, default=Path("."),
                         help="where comparison.md and comparison.csv go (default: the current folder)")

    bench = sub.add_parser("benchmark", help="the papers' claims side by side: train and evaluate every bundle with the "
                                             "same budget, paired differences to the baseline, a verdict per claim")
    bench.add_argument("--dataset-dir", type=Path, required=True, help="MURA root (Stanford's, or from mura-monai synth)")
    bench.add_argument("--output-dir", type=Path, required=True,
                       help="run folder: models, evaluations, logs, papers.md; an interrupted run resumes here")
    bench.add_argument("--bundles", default="all", type=_bundle_list, metavar="all|NAME,NAME",
                       help="bundles to train (default all: " + ", ".join(BENCHMARK_BUNDLE_NAMES) + ")")
    bench.add_argument("--epochs", type=int, default=4, help="epochs per bundle (default 4)")
    bench.add_argument("--image-size", type=int, default=96, help="network input size in pixels (default 96)")
    bench.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    bench.add_argument("--learning-rate", type=float, default=1e-3, help="learning rate (default 1e-3)")
    bench.add_argument("--seed", type=int, default=0, help="seed of every training and of the bootstrap (default 0)")
    bench.add_argument("--pretrained-path", default="", metavar="imagenet|FILE|URL",
                       help="start every bundle from these weights (imagenet: each backbone's published ImageNet "
                            "weights, downloaded once and hash-checked); default: from scratch")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    bench.add_argument("--n-bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    bench.add_argument("--restart", action="store_true", help="start again instead of resuming what OUTPUT_DIR holds")

    export = sub.add_parser("export", help="TorchScript and ONNX files of a trained bundle (MONAI's exporters; "
                                           "the attention-guided net and the router pipeline: one file per part), "
                                           "each validated against its checkpoint (models/export.json)")
    export.add_argument("--bundle", type=Path, required=True,
                        help="bundle folder with models/model.pt; an ensemble bundle exports every member")
    export.add_argument("--models-dir", type=Path,
                        help="checkpoint folder, where the files go (default: the bundle's models/); "
                             "for an ensemble, where ensemble.json is")
    export.add_argument("--members-models-dir", type=Path, metavar="DIR",
                        help="ensemble: folder holding one checkpoint folder per member (default: each member's models/)")
    export.add_argument("--format", type=_export_formats, default=EXPORT_FORMAT_NAMES, metavar="FORMAT[,FORMAT]",
                        help="torchscript, onnx or both (default torchscript,onnx)")
    export.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    export.add_argument("--validate-only", action="store_true",
                        help="validate the files already there (e.g. made by python -m monai.bundle onnx_export) "
                             "instead of exporting")
    export.add_argument("--images", nargs="+", type=Path, metavar="FILE",
                        help="validate on these radiographs (default: seeded noise of the network's input shape)")

    sub.add_parser("export-labels", help=f"moved: {_EXPORT_MOVED}")
    return parser


# mura_monai.benchmark.BENCHMARK_BUNDLES, spelt out so that --help does not import torch
BENCHMARK_BUNDLE_NAMES = ("densenet169_wbce", "resnet50", "vgg19", "fusionnet_agcnn", "siamese_triplet",
                          "resnet_svm", "efficientnet_b0_router")


# mura_monai.export.EXPORT_FORMATS, spelt out so that --help does not import torch
EXPORT_FORMAT_NAMES = ("torchscript", "onnx")


def _export_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    if not formats or set(formats) - set(EXPORT_FORMAT_NAMES):
        raise argparse.ArgumentTypeError(f"give torchscript, onnx or torchscript,onnx, not {text!r}")
    return formats


def _bundle_list(text: str) -> list[str]:
    names = list(BENCHMARK_BUNDLE_NAMES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARK_BUNDLE_NAMES]
    if unknown or not names:
        named = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(f"unknown bundle {named}: give all or some of "
                                         + ",".join(BENCHMARK_BUNDLE_NAMES))
    return names


def _synth(args: argparse.Namespace) -> int:
    from mura_monai.data.synthetic import generate_mura_root

    if args.patients < 1:
        raise ValueError(f"--patients must be at least 1, got {args.patients}")
    if not 0.0 < args.valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be between 0 and 1, got {args.valid_fraction}")
    summary = generate_mura_root(
        args.out, patients=args.patients, seed=args.seed, dicom_dir=args.dicom,
        valid_fraction=args.valid_fraction, progress=sys.stderr.isatty(),
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _infer(args: argparse.Namespace) -> int:
    from mura_monai.ensemble_predictor import EnsemblePredictor, is_ensemble_bundle
    from mura_monai.inference import BundlePredictor

    progress = sys.stderr.isatty()
    threads = _onnx_threads(args)
    if is_ensemble_bundle(args.bundle):
        if args.view_fusion or args.zoom:
            raise ValueError("--view-fusion and --zoom apply to a single model's bundle, not an ensemble")
        predictor = EnsemblePredictor(args.bundle, backend=args.backend, member_overrides=threads, device=args.device,
                                      models_dir=args.models_dir,
                                      members_models_dir=args.members_models_dir)
        if args.heatmaps or args.dicom_out:
            from mura_monai.ensemble_outputs import heatmap_policy

            heatmap_policy(predictor.settings)  # a bad heatmap_studies is refused before the images are scored
        result = predictor.predict(args.inputs, progress=progress, heatmaps_dir=args.heatmaps, dicom_out=args.dicom_out)
    else:
        if args.heatmaps or args.dicom_out:
            raise ValueError("--heatmaps and --dicom-out need an ensemble bundle (e.g. bundles/ensemble)")
        options = {"view_fusion": args.view_fusion, "view_fusion_file": str(args.view_fusion_file or "") or None,
                   "zoom": True if args.zoom else None, **threads}
        predictor = BundlePredictor(args.bundle, device=args.device, models_dir=args.models_dir,
                                    overrides={k: v for k, v in options.items() if v is not None}, backend=args.backend)
        result = predictor.predict(args.inputs, progress=progress)
    for refused in result.get("refused", []):  # the reader's reasons never hold patient data
        print(f"refused {refused['path']}: {refused['reason']}", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if not result["studies"]:
        raise ValueError(f"nothing could be scored: {len(result['refused'])} input file(s) refused")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        abnormal = sum(s["abnormal"] for s in result["studies"])
        print(f"{len(result['studies'])} studies ({abnormal} abnormal) written to {args.output}")
    else:
        print(text)
    for folder, what in ((args.heatmaps, "heatmaps"), (args.dicom_out, "DICOM SR and SC")):
        if folder:
            print(f"{what}: {folder}")
    return 0


def _onnx_threads(args: argparse.Namespace) -> dict:
    """``--onnx-threads`` as a config override, when given."""
    if args.onnx_threads is None:
        return {}
    if args.onnx_threads < 0:
        raise ValueError(f"--onnx-threads must be 0 (as many as torch uses) or more, got {args.onnx_threads}")
    return {"onnx_threads": args.onnx_threads}


def _evaluate(args: argparse.Namespace) -> int:
    from mura_monai.ensemble_outputs import write_sample_heatmaps
    from mura_monai.evaluation import evaluate
    from mura_monai.report import format_metrics_table, write_html_report

    evaluated = evaluate(args.bundle, args.dataset_dir, args.output_dir, device=args.device, models_dir=args.models_dir,
                         members_models_dir=args.members_models_dir, n_bootstrap=args.n_bootstrap, zoom=args.zoom,
                         progress=sys.stderr.isatty(), backend=args.backend,
                         onnx_threads=_onnx_threads(args).get("onnx_threads"))
    metrics = evaluated.metrics
    predictions = json.loads((args.output_dir / "predictions.json").read_text())
    samples = write_sample_heatmaps(evaluated.explainers, predictions, args.output_dir / "heatmaps", n=args.sample_heatmaps)
    report = write_html_report(metrics, args.output_dir / "report.html",
                               title=f"{args.bundle.resolve().name} on {args.dataset_dir}",
                               heatmaps=samples)
    print(format_metrics_table(metrics))
    print(f"metrics: {args.output_dir / 'metrics.json'}\nreport:  {report}")
    return 0


def _fit_ensemble(args: argparse.Namespace) -> int:
    from mura_monai.ensemble_predictor import EnsemblePredictor

    overrides = {k: v for k, v in (("combine", args.combine), ("calibration", args.calibration)) if v}
    if args.members:
        overrides["members"] = [{"name": name.strip(), "weight": 1.0} for name in args.members.split(",") if name.strip()]
    predictor = EnsemblePredictor(args.bundle, device=args.device, models_dir=args.models_dir,
                                  members_models_dir=args.members_models_dir, overrides=overrides, fitted=False)
    fitted = predictor.fit(args.dataset_dir, progress=sys.stderr.isatty())
    summary = fitted.fit_summary
    aucs = ", ".join(f"{name} {auc:.3f}" for name, auc in summary["member_study_auc"].items())
    print(f"fitted {fitted.combine} of {'+'.join(fitted.used_members)} + {fitted.calibration} calibration on "
          f"{summary['n_studies']} studies (members' study AUC: {aucs}); thresholds for {', '.join(fitted.thresholds)}")
    if fitted.selection:
        print(f"chosen by out-of-fold study AUC: {fitted.selection['reason']}")
    print(f"ensemble: {predictor.fitted_path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from mura_monai.compare import format_comparison, load_evaluation, write_comparison

    docs = [load_evaluation(path) for path in args.outputs]
    md_path, csv_path = write_comparison(docs, args.output_dir)
    print(format_comparison(docs))
    print(f"\ntable: {md_path}\ncsv:   {csv_path}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from mura_monai.benchmark import Budget, StepFailed, run_benchmark

    for name in ("epochs", "image_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    budget = Budget(epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
                    learning_rate=args.learning_rate, seed=args.seed, pretrained_path=args.pretrained_path)
    try:
        run_benchmark(args.dataset_dir, args.output_dir, args.bundles, budget, device=args.device,
                      n_bootstrap=args.n_bootstrap, restart=args.restart, echo=lambda line: print(line, flush=True))
    except StepFailed as exc:
        print(f"mura-monai benchmark: error: {exc}\n(the steps before it are kept: run the same command again to resume)",
              file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    """Exit 0 when every export asked for agrees with its checkpoint, 1 when one does not or
    when the bundle asked for has no faithful export (an ensemble member that has none runs on
    torch and is only named: the ensemble still runs)."""
    from mura_monai.ensemble_predictor import ensemble_member_specs, is_ensemble_bundle
    from mura_monai.export import OPSET, ExportError, entry_files, export_bundle, files_label, validate_exports

    if args.validate_only and args.opset is not None:
        raise ValueError("--opset applies to an export, not to --validate-only")
    for image in args.images or ():
        if not image.is_file():
            raise FileNotFoundError(f"image not found: {image}")
    if is_ensemble_bundle(args.bundle):
        specs = ensemble_member_specs(args.bundle, args.models_dir, args.members_models_dir)
        targets = [(s.bundle_dir, s.models_dir, True) for s in specs]
    elif args.members_models_dir:
        raise ValueError("--members-models-dir applies to an ensemble bundle")
    else:
        targets = [(args.bundle, args.models_dir, False)]
    rows, records = [], []
    for bundle_dir, models_dir, member in targets:
        try:
            if args.validate_only:
                record = validate_exports(bundle_dir, models_dir, formats=args.format, images=args.images or ())
            else:
                record = export_bundle(bundle_dir, models_dir, formats=args.format, images=args.images or (),
                                       opset=OPSET if args.opset is None else args.opset)
        except ExportError as exc:
            if not member:
                print(f"mura-monai export: error: {exc}", file=sys.stderr)
                return 1
            print(exc)
            continue
        folder = Path(models_dir).resolve() if models_dir else Path(bundle_dir).resolve() / "models"
        records.append(folder / "export.json")
        for fmt in args.format:
            entry = record["formats"][fmt]
            diff = "-" if entry["max_abs_diff"] is None else f"{entry['max_abs_diff']:.1e}"
            rows.append((record["bundle"], fmt, diff, "yes" if entry["validated"] else "no",
                         str(folder / files_label(entry_files(entry))), entry.get("error")))
    if rows:
        header = ("bundle", "format", "max prob diff", "validated", "file", None)
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4])
            if row[5]:
                print(f"  {row[5]}")
        for path in records:
            print(f"record: {path}")
    return 0 if all(row[3] == "yes" for row in rows) else 1


_COMMANDS = {"benchmark": _benchmark, "synth": _synth, "infer": _infer, "evaluate": _evaluate, "fit-ensemble": _fit_ensemble,
             "compare": _compare, "export": _export}
# The library never imports the service: exporting the review's labels is the listener's command.
_EXPORT_MOVED = "mura-listener export-labels --config listener.toml OUT"


def main(args: list[str] | None = None) -> int:
    if (sys.argv[1:] if args is None else args)[:1] == ["export-labels"]:
        print(f"mura-monai export-labels: error: moved to the listener's command line: {_EXPORT_MOVED}", file=sys.stderr)
        return 2
    parsed = _setup_argparser().parse_args(args)
    logging.basicConfig(
        level=logging.DEBUG if parsed.debug else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not parsed.debug:  # the JPEG 2000 encoder logs every tile at INFO: one line per synthetic DICOM file
        logging.getLogger("openjpeg").setLevel(logging.WARNING)
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per copied module of every SC
    from mura_monai.data.mura import MuraDatasetError
    from mura_monai.data.radiograph_reader import RadiographReadError

    user_errors = (FileNotFoundError, NotADirectoryError, ValueError, MuraDatasetError, RadiographReadError)
    try:
        return _COMMANDS[parsed.command](parsed)
    except (*user_errors, RuntimeError) as exc:
        cause = _user_error_cause(exc, user_errors)
        if parsed.debug or cause is None:
            raise
        print(f"mura-monai {parsed.command}: error: {cause}", file=sys.stderr)
        return 2


def _user_error_cause(exc: BaseException, user_errors: tuple) -> BaseException | None:
    """The input error behind ``exc``: MONAI's config parser wraps them in ``RuntimeError``."""
    while exc is not None:
        if isinstance(exc, user_errors):
            return exc
        exc = exc.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
