"""The papers' comparison as one resumable command: same budget, same split, same seed for every bundle.

``mura-monai benchmark`` trains each single-model bundle through its own ``monai.bundle run
training`` (a subprocess, exactly as a user runs it), evaluates it on the valid split, adds the
readings the papers compare against (Huschauer's zoom on the VGG-19, one view against all
views, Han, Lee and Kim's ensemble of DenseNet, ResNet-50 and the fusion network) and writes the
leaderboard and the claims' verdicts (:mod:`mura_monai.papers`).

Why a plan of steps with a state file: on a CPU the whole comparison takes an hour, so a run
that is interrupted (a closed laptop, a killed job) picks up at the first unfinished step, and
a run folder made with another budget is refused rather than mixed into the same table.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mura_monai.compare import human_duration
from mura_monai.data.mura import find_mura_root
from mura_monai.papers import ENSEMBLE_MEMBERS

__all__ = ["BENCHMARK_BUNDLES", "Budget", "Step", "StepFailed", "plan", "run_benchmark", "training_overrides"]

BUNDLES_DIR = Path(__file__).resolve().parents[1] / "bundles"
# resnet50 before resnet_svm (whose SVMs read the trained ResNet-50's features), the fusion net's
# two partners before it; the ensemble and the derived readings follow the trainings they use
BENCHMARK_BUNDLES = ("densenet169_wbce", "resnet50", "vgg19", "fusionnet_agcnn", "siamese_triplet",
                     "resnet_svm", "efficientnet_b0_router")
STATE_FILE = "state.json"
_SHOWN = re.compile(r"Key metric|=== training|^fitted|chosen by|stage \w+ from epoch")


class StepFailed(RuntimeError):
    """A bundle's training failed: its log names the reason; the finished steps are kept."""


@dataclass(frozen=True)
class Budget:
    """What every bundle gets: the same epochs, input size, batch, learning rate and seed, no
    rotation, and no early stop (every method uses its whole budget)."""

    epochs: int = 4
    image_size: int = 96
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    pretrained_path: str = ""  # "" (from scratch), "imagenet" (each backbone's published weights), a file or URL

    def values(self) -> dict:
        values = {"max_epochs": self.epochs, "image_size": self.image_size, "batch_size": self.batch_size,
                  "learning_rate": self.learning_rate, "seed": self.seed, "rotate_range": 0, "early_stop_patience": 0}
        return values | ({"pretrained_path": self.pretrained_path} if self.pretrained_path else {})


@dataclass
class Step:
    name: str
    run: Callable[[], str] = field(repr=False)  # returns a one-line result
    outputs: tuple[Path, ...] = ()


def _train_config(bundle: str) -> dict:
    return json.loads((BUNDLES_DIR / bundle / "configs" / "train.json").read_text())


def training_overrides(bundle: str, budget: Budget, root: Path, run_dir: Path, device: str = "auto") -> dict:
    """The command-line overrides of one bundle's training: the budget's values that its config
    reads and does not refuse (resnet_svm has no epochs, the fusion net no early stop of its
    own), the run's folders, and the trained ResNet-50 for the SVMs' features."""
    config = _train_config(bundle)
    refused = set(config.get("unsupported_overrides") or {})
    values = {k: v for k, v in budget.values().items() if k in config and k not in refused}
    values.update(dataset_dir=str(root), ckpt_dir=str(run_dir / "models" / bundle),
                  output_dir=str(run_dir / "train" / bundle), device=device)
    if bundle == "resnet_svm":
        values["backbone_ckpt"] = str(run_dir / "models" / "resnet50" / "model.pt")
    return values


def _command_line(values: dict) -> list[str]:
    args = []
    for key, value in values.items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, bool) else str(value)]
    return args


def _run_logged(cmd: list[str], cwd: Path, log: Path, echo: Callable[[str], None]) -> None:
    """Run ``cmd``, its whole output to ``log``, epoch lines shown as they come."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle, subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                   text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.write(line)
            if _SHOWN.search(line) and "Evaluator" not in line:
                echo("      " + line.strip()[-150:])
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise StepFailed(f"{' '.join(cmd[2:6])} failed (exit {proc.returncode}); log: {log}\n" + "\n".join(tail))


def _auc_line(metrics: dict) -> str:
    return f"study AUC {metrics['study']['auc']:.3f}, κ {metrics['study']['kappa']:.3f} on {metrics['n_studies']} studies"


def _read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def plan(bundles: list[str], root: Path, run_dir: Path, budget: Budget, device: str = "auto", n_bootstrap: int = 1000,
         echo: Callable[[str], None] = print) -> list[Step]:
    """The steps of a run, in order: each bundle trained then evaluated, the zoom reading, the ensemble.

    Every step is a subprocess of the commands a user types (``monai.bundle run training``,
    ``mura-monai evaluate``, ``mura-monai fit-ensemble``), its whole output in ``logs/``: a
    step's memory goes back when it ends, and its log is the record of what was run."""
    cli = [sys.executable, "-m", "mura_monai.cli"]
    steps: list[Step] = []

    def evaluation(name: str, bundle: str, models: Path, *extra: str) -> Callable[[], str]:
        out = run_dir / "eval" / name

        def run() -> str:
            _run_logged([*cli, "evaluate", "--bundle", str(BUNDLES_DIR / bundle), "--dataset-dir", str(root),
                         "--output-dir", str(out), "--models-dir", str(models), "--device", device,
                         "--n-bootstrap", str(n_bootstrap), "--sample-heatmaps", "0", *extra],
                        run_dir, run_dir / "logs" / f"evaluate_{name}.log", echo)
            return _auc_line(_read_metrics(out))
        return run

    for bundle in bundles:
        ckpt = run_dir / "models" / bundle

        def train(bundle=bundle, ckpt=ckpt) -> str:
            shutil.rmtree(ckpt, ignore_errors=True)  # an interrupted training starts again from scratch
            values = training_overrides(bundle, budget, root, run_dir, device)
            cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json",
                   "--config_file", "configs/train.json", *_command_line(values)]
            _run_logged(cmd, BUNDLES_DIR / bundle, run_dir / "logs" / f"train_{bundle}.log", echo)
            if not (ckpt / "model.pt").is_file():
                raise StepFailed(f"{bundle} training left no {ckpt / 'model.pt'}")
            return "trained"

        steps.append(Step(f"train {bundle}", train, (ckpt / "model.pt",)))
        steps.append(Step(f"evaluate {bundle}", evaluation(bundle, bundle, ckpt),
                          (run_dir / "eval" / bundle / "predictions.json",)))
    if "vgg19" in bundles:
        zoom = evaluation("vgg19_zoom", "vgg19", run_dir / "models" / "vgg19", "--zoom")
        steps.append(Step("evaluate vgg19 with zoom", zoom, (run_dir / "eval" / "vgg19_zoom" / "predictions.json",)))
    members = [b for b in ENSEMBLE_MEMBERS if b in bundles]
    if len(members) >= 2:
        models = run_dir / "models" / "ensemble"
        evaluate_ensemble = evaluation("ensemble", "ensemble", models, "--members-models-dir", str(run_dir / "models"))

        def ensemble() -> str:
            _run_logged([*cli, "fit-ensemble", "--bundle", str(BUNDLES_DIR / "ensemble"), "--dataset-dir", str(root),
                         "--models-dir", str(models), "--members-models-dir", str(run_dir / "models"),
                         "--members", ",".join(members), "--device", device],
                        run_dir, run_dir / "logs" / "fit_ensemble.log", echo)
            line = evaluate_ensemble()
            chosen = _read_metrics(run_dir / "eval" / "ensemble")["ensemble"]
            return line + f"; chose {chosen['combine']} of {'+'.join(chosen.get('members_used', members))}"

        steps.append(Step(f"fit and evaluate the ensemble of {'+'.join(members)}", ensemble,
                          (run_dir / "eval" / "ensemble" / "predictions.json",)))
    return steps


def _settings(root: Path, bundles: list[str], budget: Budget, n_bootstrap: int) -> dict:
    return {"dataset_dir": str(root), "bundles": list(bundles), "budget": asdict(budget), "n_bootstrap": n_bootstrap}


def _load_state(run_dir: Path, settings: dict, restart: bool) -> dict:
    path = run_dir / STATE_FILE
    if restart or not path.is_file():
        return {"settings": settings, "done": {}}
    state = json.loads(path.read_text())
    if state.get("settings") != settings:
        differs = sorted(k for k in settings if state.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"{run_dir} holds a benchmark run with other settings ({', '.join(differs)} differ): "
                         "give another --output-dir, the same settings, or --restart")
    return state


def _save_state(run_dir: Path, state: dict) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(run_dir / STATE_FILE)


def run_benchmark(dataset_dir: str | Path, output_dir: str | Path, bundles: list[str] | None = None,
                  budget: Budget | None = None, device: str = "auto", n_bootstrap: int = 1000, restart: bool = False,
                  echo: Callable[[str], None] = print) -> dict:
    """Run (or resume) the comparison in ``output_dir``; returns what :func:`write_papers_report` returns."""
    from mura_monai.papers import write_papers_report

    root = find_mura_root(dataset_dir)
    bundles = list(bundles or BENCHMARK_BUNDLES)
    unknown = [b for b in bundles if b not in BENCHMARK_BUNDLES]
    if unknown:
        raise ValueError(f"not a benchmark bundle: {', '.join(unknown)} (choose from {', '.join(BENCHMARK_BUNDLES)})")
    if "resnet_svm" in bundles and "resnet50" not in bundles:
        raise ValueError("resnet_svm's SVMs read the features of a trained resnet50: add resnet50 to --bundles")
    bundles = [b for b in BENCHMARK_BUNDLES if b in bundles]
    budget = budget or Budget()
    run_dir = Path(output_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = _settings(root, bundles, budget, n_bootstrap)
    state = _load_state(run_dir, settings, restart)
    _save_state(run_dir, state)
    steps = plan(bundles, root, run_dir, budget, device, n_bootstrap, echo)
    started = time.monotonic()
    for number, step in enumerate(steps, 1):
        prefix = f"[{number}/{len(steps)}]"
        if step.name in state["done"] and all(p.exists() for p in step.outputs):
            echo(f"{prefix} {step.name}: done before ({state['done'][step.name]['result']})")
            continue
        echo(f"{prefix} {step.name} ({human_duration(time.monotonic() - started)} into this run)")
        step_start = time.monotonic()
        result = step.run()
        seconds = time.monotonic() - step_start
        state["done"][step.name] = {"result": result, "seconds": round(seconds, 1)}
        _save_state(run_dir, state)
        echo(f"      {result} in {human_duration(seconds)}")
    report = write_papers_report(run_dir, settings, n_bootstrap=n_bootstrap, seed=budget.seed)
    state["total_seconds"] = round(sum(s["seconds"] for s in state["done"].values()), 1)
    _save_state(run_dir, state)
    echo(f"leaderboard and verdicts: {run_dir / 'papers.md'} ({human_duration(state['total_seconds'])} of steps in all)")
    return report
