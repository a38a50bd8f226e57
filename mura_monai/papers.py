"""The source papers' claims, each checked by a paired difference on the same studies.

Every paper behind a bundle claims that its method beats a baseline. Separate confidence
intervals of two methods scored on the same valid studies overlap far more than the methods
differ, because both err on the same hard studies; the comparison that answers a claim is the
interval of the *difference*, from resamples shared by both (:func:`~mura_monai.metrics.paired_bootstrap`).

A claim's verdict reads the 95 % interval of the study-AUC difference (method minus baseline):

* **reproduced**: the whole interval lies above 0;
* **not reproduced**: the whole interval lies below ``MIN_GAIN`` (0.01): at best a negligible gain;
* **inconclusive at this size**: anything else (the interval is too wide to say), and always when
  either class has fewer than ``MIN_STUDIES_PER_CLASS`` studies, where a bootstrap interval
  cannot be trusted.

The κ difference is reported beside it (it depends on each method's threshold). This module
reads what :mod:`mura_monai.benchmark` leaves in a run folder (``eval/<name>/metrics.json`` and
``predictions.json``) and writes the leaderboard and one table per paper in that paper's format.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from mura_monai.compare import human_count, human_duration, markdown_table, part_order
from mura_monai.engines.view_fusion import view_fusion_table
from mura_monai.metrics import aggregate_studies, paired_bootstrap
from mura_monai.report import format_patel_et_al_table, format_value, format_with_ci

__all__ = [
    "BASELINE", "BEST_MEMBER", "CLAIMS", "ENTRIES", "MIN_GAIN", "PAPERS", "Claim", "Entry",
    "evaluate_claims", "leaderboard_rows", "study_scores", "verdict", "write_papers_report",
]

MIN_GAIN = 0.01
MIN_STUDIES_PER_CLASS = 20
BASELINE = "densenet169_wbce"
BEST_MEMBER = "best member"  # resolved per run: the ensemble member with the best study AUC
ENSEMBLE_MEMBERS = ("densenet169_wbce", "resnet50", "fusionnet_agcnn")  # Han, Lee and Kim's ensemble

RAJPURKAR = "rajpurkar"
HAN = "han"
PATEL = "patel"
REGALLA = "regalla"
HUSCHAUER = "huschauer"
PAPERS = {
    RAJPURKAR: 'Rajpurkar P. et al. (2017), "MURA: Large Dataset for Abnormality Detection in Musculoskeletal Radiographs"',
    HAN: 'Han S.J., Lee C.I., Kim S.-J., "Development of medical aid artificial intelligence through detection of '
         'musculoskeletal X-ray abnormalities using artificial neural networks in medical image data"',
    PATEL: 'Patel K., Patel V., Patel S., Patel D., "Deep Learning For Abnormalities Detection in Musculoskeletal Radiographs"',
    REGALLA: 'Regalla S.T., Kudikala S.P. (2023), "Research on Musculoskeletal Abnormality Detection using Deep Learning '
             'Techniques"',
    HUSCHAUER: 'Huschauer S., "Deep Learning-based Classification of Musculoskeletal Radiographs - Learn to Zoom from '
               'Network Response"',
}
SHORT_NAMES = {RAJPURKAR: "Rajpurkar et al. 2017", HAN: "Han, Lee and Kim", PATEL: "Patel et al.",
               REGALLA: "Regalla and Kudikala 2023", HUSCHAUER: "Huschauer"}
# MURA's DenseNet-169 baseline on its test set, per body part and overall (Rajpurkar et al., table 2)
MURA_BASELINE_KAPPA = {"XR_ELBOW": 0.710, "XR_FINGER": 0.389, "XR_FOREARM": 0.737, "XR_HAND": 0.851,
                       "XR_HUMERUS": 0.600, "XR_SHOULDER": 0.729, "XR_WRIST": 0.931, "overall": 0.705}
MURA_BEST_RADIOLOGIST_KAPPA = 0.778


@dataclass(frozen=True)
class Entry:
    """One scored method of a run: an evaluation folder, read as it is or as a derived reading
    (the first look of a zoom pass, a study's first view alone)."""

    name: str
    eval_dir: str
    paper: str
    probability: str = "probability"  # the image key aggregated into the study probability
    first_view: bool = False
    bundle: str = ""  # the bundle it is trained from, for the training cost

    @property
    def derived(self) -> bool:
        return self.probability != "probability" or self.first_view


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    method: str
    baseline: str


ENTRIES = {e.name: e for e in (
    Entry("densenet169_wbce", "densenet169_wbce", RAJPURKAR, bundle="densenet169_wbce"),
    Entry("resnet50", "resnet50", HAN, bundle="resnet50"),
    Entry("fusionnet_agcnn", "fusionnet_agcnn", HAN, bundle="fusionnet_agcnn"),
    Entry("ensemble", "ensemble", HAN),
    Entry("efficientnet_b0_router", "efficientnet_b0_router", PATEL, bundle="efficientnet_b0_router"),
    Entry("siamese_triplet", "siamese_triplet", REGALLA, bundle="siamese_triplet"),
    Entry("vgg19", "vgg19", HUSCHAUER, bundle="vgg19"),
    Entry("vgg19 + zoom", "vgg19_zoom", HUSCHAUER, bundle="vgg19"),
    Entry("vgg19, first look", "vgg19_zoom", HUSCHAUER, probability="probability_first", bundle="vgg19"),
    Entry("resnet_svm", "resnet_svm", HUSCHAUER, bundle="resnet_svm"),
    Entry("densenet169_wbce, one view", BASELINE, HUSCHAUER, first_view=True, bundle="densenet169_wbce"),
)}

CLAIMS = (
    Claim(HAN, "the attention-guided fusion network beats DenseNet", "fusionnet_agcnn", "densenet169_wbce"),
    Claim(HAN, "the attention-guided fusion network beats ResNet-50", "fusionnet_agcnn", "resnet50"),
    Claim(HAN, "the ensemble beats its best member", "ensemble", BEST_MEMBER),
    Claim(PATEL, "EfficientNet-B0 models per body part behind a body-part router beat one DenseNet for all parts",
          "efficientnet_b0_router", "densenet169_wbce"),
    Claim(REGALLA, "a Siamese DenseNet-169 trained with a triplet loss beats DenseNet-169 with binary cross-entropy",
          "siamese_triplet", "densenet169_wbce"),
    Claim(HUSCHAUER, "zooming into the network's attention and looking again beats the first look",
          "vgg19 + zoom", "vgg19, first look"),
    Claim(HUSCHAUER, "a bag of SVMs on a CNN's features beats that CNN's own classifier", "resnet_svm", "resnet50"),
    Claim(HUSCHAUER, "combining a study's views (MURA's mean) beats reading one view",
          "densenet169_wbce", "densenet169_wbce, one view"),
)


def verdict(ci95, n_per_class: tuple[int, int] = (MIN_STUDIES_PER_CLASS, MIN_STUDIES_PER_CLASS)) -> str:
    """The plain verdict of an AUC-difference interval on studies of ``n_per_class`` (normal,
    abnormal); rule in the module docstring."""
    lo, hi = ci95
    if math.isnan(lo) or math.isnan(hi) or min(n_per_class) < MIN_STUDIES_PER_CLASS:
        return "inconclusive at this size"
    if lo > 0:
        return "reproduced"
    if hi < MIN_GAIN:
        return "not reproduced"
    return "inconclusive at this size"


# ---------------------------------------------------------------- reading a run


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _metrics(run_dir: Path, entry: Entry) -> dict:
    return _read(run_dir / "eval" / entry.eval_dir / "metrics.json")


def available(run_dir: str | Path) -> dict[str, Entry]:
    """The entries whose evaluation the run holds."""
    run_dir = Path(run_dir)
    return {name: e for name, e in ENTRIES.items() if (run_dir / "eval" / e.eval_dir / "predictions.json").is_file()}


def study_scores(run_dir: str | Path, entry: Entry) -> tuple[dict[str, tuple[int, float]], float]:
    """``({study: (label, probability)}, threshold)`` of one entry on the run's valid studies."""
    folder = Path(run_dir) / "eval" / entry.eval_dir
    metrics, predictions = _read(folder / "metrics.json"), _read(folder / "predictions.json")
    threshold = float(metrics["study"]["threshold"])
    if not entry.derived:
        return {s["study"]: (int(s["label"]), float(s["probability"])) for s in predictions["studies"]}, threshold
    images = predictions["images"]
    if entry.first_view:
        first: dict[str, dict] = {}
        for image in sorted(images, key=lambda r: str(r.get("path", ""))):
            first.setdefault(image["study"], image)
        return {s: (int(r["label"]), float(r["probability"])) for s, r in first.items()}, threshold
    records = [{**r, "probability": r[entry.probability]} for r in images]
    studies = aggregate_studies(records, metrics.get("aggregation", "mean"))
    return {s["study"]: (int(s["label"]), float(s["probability"])) for s in studies}, threshold


def _best_member(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    ensemble = entries.get("ensemble")
    if ensemble is None:
        return None
    members = _metrics(run_dir, ensemble).get("members", {})
    ranked = sorted((block["study"]["auc"], name) for name, block in members.items()
                    if name in entries and not math.isnan(block["study"].get("auc", float("nan"))))
    return ranked[-1][1] if ranked else None


def paired(run_dir: str | Path, method: Entry, baseline: Entry, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """:func:`paired_bootstrap` of two entries on the studies both scored (which must be the same)."""
    a, threshold_a = study_scores(run_dir, method)
    b, threshold_b = study_scores(run_dir, baseline)
    if set(a) != set(b):
        raise ValueError(f"{method.name} and {baseline.name} were scored on different studies "
                         f"({len(set(a) ^ set(b))} not in both): not a paired comparison")
    studies = sorted(a)
    labels = [a[s][0] for s in studies]
    if labels != [b[s][0] for s in studies]:
        raise ValueError(f"{method.name} and {baseline.name} disagree on the studies' labels")
    out = paired_bootstrap(labels, [a[s][1] for s in studies], [b[s][1] for s in studies],
                           threshold_a, threshold_b, n_bootstrap=n_bootstrap, seed=seed)
    out["n_per_class"] = [labels.count(0), labels.count(1)]
    return out


def evaluate_claims(run_dir: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """Each claim whose two sides the run evaluated: both figures, the paired differences and the verdict."""
    run_dir = Path(run_dir)
    entries = available(run_dir)
    out = []
    for claim in CLAIMS:
        baseline = _best_member(run_dir, entries) if claim.baseline == BEST_MEMBER else claim.baseline
        if claim.method not in entries or baseline not in entries:
            continue
        diff = paired(run_dir, entries[claim.method], entries[baseline], n_bootstrap, seed)
        out.append({"paper": PAPERS[claim.paper], "paper_short": SHORT_NAMES[claim.paper], "claim": claim.text,
                    "method": claim.method, "baseline": baseline,
                    "auc": diff["auc"], "kappa": diff["kappa"], "n_studies": diff["n"], "n_bootstrap": diff["n_bootstrap"],
                    "n_per_class": diff["n_per_class"], "verdict": verdict(diff["auc"]["ci95"], diff["n_per_class"])})
    return out


# ---------------------------------------------------------------- tables


def _difference(block: dict) -> str:
    lo, hi = block["ci95"]
    text = f"{block['difference']:+.3f}"
    return text if math.isnan(lo) else f"{text} [{lo:+.3f}, {hi:+.3f}]"


def leaderboard_rows(run_dir: str | Path, n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """One row per scored method (derived readings left out), best study AUC first, each with its
    paired difference to the baseline (``BASELINE``) on the same studies."""
    run_dir = Path(run_dir)
    entries = {n: e for n, e in available(run_dir).items() if not e.derived}
    rows = []
    for name, entry in entries.items():
        metrics = _metrics(run_dir, entry)
        training = metrics.get("training") or {}
        if entry.bundle and not training and (run_dir / "eval" / entry.bundle / "metrics.json").is_file():
            training = _metrics(run_dir, ENTRIES[entry.bundle]).get("training") or {}
        row = {"method": name, "paper": PAPERS[entry.paper], "study": metrics["study"], "image_auc": metrics["image"]["auc"],
               "n_studies": metrics.get("n_studies"), "training": training, "difference": None}
        if name != BASELINE and BASELINE in entries:
            row["difference"] = paired(run_dir, entry, entries[BASELINE], n_bootstrap, seed)
        rows.append(row)
    rows.sort(key=lambda r: -r["study"]["auc"] if not math.isnan(r["study"]["auc"]) else math.inf)
    return rows


def _leaderboard_table(rows: list[dict]) -> str:
    table = [["#", "method", "study AUC [95% CI]", "study κ [95% CI]", "image AUC",
              f"Δ AUC vs {BASELINE} [95% CI]", "Δ κ [95% CI]", "train time", "parameters"]]
    for rank, row in enumerate(rows, 1):
        diff = row["difference"]
        table.append([
            str(rank), row["method"], format_with_ci(row["study"], "auc"), format_with_ci(row["study"], "kappa"),
            format_value(row["image_auc"]),
            "baseline" if diff is None else _difference(diff["auc"]),
            "baseline" if diff is None else _difference(diff["kappa"]),
            human_duration(row["training"].get("train_time_s")), human_count(row["training"].get("n_parameters")),
        ])
    return markdown_table(table)


def _claims_table(claims: list[dict]) -> str:
    table = [["paper", "claim", "method", "baseline", "Δ study AUC [95% CI]", "Δ κ [95% CI]", "verdict"]]
    for c in claims:
        table.append([c["paper_short"], c["claim"], c["method"], c["baseline"], _difference(c["auc"]),
                      _difference(c["kappa"]), f"**{c['verdict']}**"])
    return markdown_table(table)


def _per_part_table(docs: dict[str, dict], metric: str, first_column: str, extra_rows=()) -> str:
    names = list(docs)
    rows = [[first_column, *names]]
    for part in part_order(list(docs.values())):
        rows.append([part.removeprefix("XR_").capitalize(),
                     *(format_value(docs[n].get("per_body_part", {}).get(part, {}).get(metric, float("nan"))) for n in names)])
    for label, values in extra_rows:
        rows.append([label, *values])
    return markdown_table(rows)


def _han_section(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    columns = {"DenseNet": "densenet169_wbce", "ResNet50": "resnet50", "FusionNet": "fusionnet_agcnn", "Ensemble": "ensemble"}
    docs = {label: _metrics(run_dir, entries[n]) for label, n in columns.items() if n in entries}
    if not docs:
        return None
    average = [format_value(sum(b["accuracy"] for b in d["per_body_part"].values()) / max(len(d["per_body_part"]), 1))
               for d in docs.values()]
    return ("Accuracy per body part at each model's threshold, their average and the study AUC (Han, Lee and Kim's "
            "table):\n\n" + _per_part_table(docs, "accuracy", "Part", [
                ("Average", average), ("AUC", [format_value(d["study"]["auc"]) for d in docs.values()])]))


def _patel_section(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    if "efficientnet_b0_router" not in entries:
        return None
    return ("Per body part at study level, the router's accuracy, the models' storage and the training time "
            "(Patel et al.'s table):\n\n" + format_patel_et_al_table(_metrics(run_dir, entries["efficientnet_b0_router"])))


def _regalla_section(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    names = [n for n in ("siamese_triplet", "densenet169_wbce") if n in entries]
    if "siamese_triplet" not in names:
        return None
    rows = [["model", "accuracy", "error rate", "Cohen's κ", "finger studies: κ"]]
    for name in names:
        m = _metrics(run_dir, entries[name])
        finger = m.get("per_body_part", {}).get("XR_FINGER", {})
        rows.append([name, format_value(m["study"]["accuracy"]), format_value(1 - m["study"]["accuracy"]),
                     format_value(m["study"]["kappa"]), format_value(finger.get("kappa", float("nan")))])
    return "Study-level accuracy, error rate and Cohen's κ (Regalla and Kudikala's measures):\n\n" + markdown_table(rows)


def _huschauer_section(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    names = [n for n in ("vgg19", "vgg19 + zoom", "resnet_svm", "resnet50") if n in entries]
    if not names:
        return None
    docs = {n: _metrics(run_dir, entries[n]) for n in names}
    overall = [format_value(d["study"]["kappa"]) for d in docs.values()]
    text = ("Cohen's κ per body part and over all studies (Huschauer's measure):\n\n"
            + _per_part_table(docs, "kappa", "Part", [("All studies", overall)]))
    fusion = run_dir / "eval" / BASELINE / "view_fusion.json"
    if fusion.is_file():
        text += f"\n\nViews of a study combined ({BASELINE}; Huschauer tried early fusion and suggested late fusion):\n\n"
        text += view_fusion_table(_read(fusion))
    return text


def _rajpurkar_section(run_dir: Path, entries: dict[str, Entry]) -> str | None:
    if BASELINE not in entries:
        return None
    m = _metrics(run_dir, entries[BASELINE])
    rows = [["Part", f"{BASELINE} here", "MURA baseline (Rajpurkar et al., test set)"]]
    for part in part_order([m]):
        rows.append([part.removeprefix("XR_").capitalize(), format_value(m["per_body_part"][part]["kappa"]),
                     format_value(MURA_BASELINE_KAPPA.get(part, float("nan")))])
    rows.append(["Overall", format_value(m["study"]["kappa"]), format_value(MURA_BASELINE_KAPPA["overall"])])
    return (f"Cohen's κ per body part (MURA's table; the best of three radiologists scored "
            f"{MURA_BEST_RADIOLOGIST_KAPPA} overall on MURA):\n\n" + markdown_table(rows))


_SECTIONS = ((RAJPURKAR, _rajpurkar_section), (HAN, _han_section), (PATEL, _patel_section),
             (REGALLA, _regalla_section), (HUSCHAUER, _huschauer_section))


def write_papers_report(run_dir: str | Path, settings: dict, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """``papers.md`` (settings, leaderboard, claims with verdicts, one table per paper),
    ``claims.json`` and ``leaderboard.csv`` in ``run_dir``; returns ``{"claims": ..., "leaderboard": ...}``."""
    run_dir = Path(run_dir)
    entries = available(run_dir)
    if not entries:
        raise FileNotFoundError(f"no evaluations under {run_dir / 'eval'}: run the benchmark first")
    rows = leaderboard_rows(run_dir, n_bootstrap, seed)
    claims = evaluate_claims(run_dir, n_bootstrap, seed)
    start = "from " + (settings.get("budget", {}).get("pretrained_path") or "scratch")
    budget = ", ".join(f"{k} {v}" for k, v in settings.get("budget", {}).items() if v != "")
    parts = [
        "# The papers' claims, measured side by side\n",
        f"Root: `{settings.get('dataset_dir', '?')}` ({rows[0]['n_studies']} valid studies). Every bundle trained "
        f"{start} with the same budget ({budget}) through its own `monai.bundle` workflow and evaluated on the same "
        f"valid studies. Differences are paired: method minus baseline on the same {n_bootstrap} bootstrap resamples "
        f"of the studies. Verdict: reproduced when the 95 % interval of the study-AUC difference lies above 0, not "
        f"reproduced when it lies below +{MIN_GAIN}, otherwise (or with fewer than {MIN_STUDIES_PER_CLASS} normal or "
        f"abnormal studies) inconclusive at this size. The bundles that keep their best epoch choose it on these "
        f"same valid studies, as the papers do on MURA (which has no public test set); efficientnet_b0_router "
        f"chooses on a 20 % patient hold-out of its training split instead, and resnet_svm has no epochs.\n",
        "## Leaderboard\n", _leaderboard_table(rows) + "\n",
        "## The claims\n", (_claims_table(claims) if claims else "No claim had both of its sides evaluated.") + "\n",
    ]
    for key, section in _SECTIONS:
        body = section(run_dir, entries)
        if body:
            parts += [f"## {PAPERS[key]}\n", body.rstrip() + "\n"]
    (run_dir / "papers.md").write_text("\n".join(parts))
    (run_dir / "claims.json").write_text(json.dumps({"settings": settings, "claims": claims}, indent=2))
    _write_leaderboard_csv(run_dir / "leaderboard.csv", rows)
    return {"claims": claims, "leaderboard": rows}


def _write_leaderboard_csv(path: Path, rows: list[dict]) -> None:
    columns = ["rank", "method", "n_studies", "auc", "auc_lo", "auc_hi", "kappa", "kappa_lo", "kappa_hi", "image_auc",
               "d_auc", "d_auc_lo", "d_auc_hi", "d_kappa", "d_kappa_lo", "d_kappa_hi", "train_time_s", "n_parameters"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for rank, row in enumerate(rows, 1):
            study, diff = row["study"], row["difference"]
            ci = study.get("ci95", {})
            d = [(diff[m]["difference"], *diff[m]["ci95"]) if diff else ("", "", "") for m in ("auc", "kappa")]
            writer.writerow([rank, row["method"], row["n_studies"], study["auc"], *ci.get("auc", ["", ""]), study["kappa"],
                             *ci.get("kappa", ["", ""]), row["image_auc"], *d[0], *d[1],
                             row["training"].get("train_time_s", ""), row["training"].get("n_parameters", "")])
