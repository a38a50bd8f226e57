"""The DICOM service of mura-monai: receive studies from a PACS, analyse them, send results back."""
from __future__ import annotations
