"""DICOM objects a PACS receives from mura-monai: a TID 1500 SR with the study's result and RGB
Secondary Captures of the heatmaps, both in the analysed study and marked not for diagnostic use."""
from mura_monai.dicom_out.secondary_capture import SC_SERIES_DESCRIPTION, UNPAIRED_BODY_PARTS, build_heatmap_sc, source_side
from mura_monai.dicom_out.sr import SR_SERIES_DESCRIPTION, build_sr, read_sr_result
from mura_monai.dicom_out.writer import write_dicom_outputs, write_heatmap_captures, write_sr

__all__ = ["build_sr", "read_sr_result", "build_heatmap_sc", "write_dicom_outputs", "write_heatmap_captures", "write_sr",
           "source_side", "SR_SERIES_DESCRIPTION", "SC_SERIES_DESCRIPTION", "UNPAIRED_BODY_PARTS"]
