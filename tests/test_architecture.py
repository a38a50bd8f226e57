"""The one direction between the packages: the library never needs the service.

``mura_monai`` is what researchers install to train and compare models; ``listener`` is the
hospital service built on it. A library module importing the service would drag pynetdicom, a
web stack and a database schema into every training run, and let service internals leak into
model code. These tests read the imports from the source, so a new one fails here first.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    """``{module file: names it imports}`` for every module under ``package`` (absolute names)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offenders(package: str, forbidden: str) -> list[str]:
    return [f"{module} imports {name}" for module, names in _imports(package).items()
            for name in sorted(names) if name == forbidden or name.startswith(forbidden + ".")]


def test_the_library_never_imports_the_service():
    assert _offenders("mura_monai", "listener") == []


@pytest.mark.parametrize("package", ["mura_monai/networks", "mura_monai/losses", "mura_monai/dicom_out"])
def test_networks_losses_and_dicom_writers_do_not_reach_into_the_data_layer(package):
    assert _offenders(package, "mura_monai.data") == []


def test_the_review_reads_the_listeners_tables_only_through_the_store():
    """The review app owns its labels table; the studies, instances and outbox are the store's."""
    offenders = []
    for path in sorted((ROOT / "listener" / "review").rglob("*.py")):
        text = path.read_text().lower()
        for table in ("studies", "instances", "outbox"):
            for clause in (f"from {table}", f"join {table}", f"update {table}", f"into {table}"):
                if clause in text:
                    offenders.append(f"{path.name}: {clause}")
    assert offenders == []


def test_export_labels_says_where_it_moved(capsys):
    from mura_monai.cli import main

    assert main(["export-labels", "--config", "listener.toml", "out"]) == 2
    assert "mura-listener export-labels" in capsys.readouterr().err


def test_only_the_services_entry_points_start_the_review_app():
    """The review builds on the listener; of the listener only the composition roots (the service
    that runs the app beside it, the command line that exports its labels) may name it."""
    importers = {module for module, names in _imports("listener").items()
                 if not module.startswith("listener/review/") and any(n.startswith("listener.review") for n in names)}
    assert importers <= {"listener/service.py", "listener/__main__.py"}
