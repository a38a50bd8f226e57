"""dicom3tools' IOD checker as a test oracle: it knows the standard's module and template tables,
which neither pydicom nor highdicom enforce on write."""
from __future__ import annotations

import shutil
import subprocess

import pytest


def dciodvfy_errors(path) -> list[str]:
    """The checker exits 0 even when it finds errors, so its ``Error`` lines are the verdict."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("Error")]
