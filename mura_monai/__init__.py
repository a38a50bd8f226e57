"""mura-monai: abnormality detection in musculoskeletal radiographs, as a MONAI plugin."""
from __future__ import annotations

__version__ = "0.1.0"
