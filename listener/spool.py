"""Where received instances live on disk, written so that a file exists only when complete.

An acknowledged instance must survive a crash: the bytes go to a temporary file on the same
filesystem, are flushed and fsynced, renamed into place (atomic), and the directory is fsynced
so the rename itself is durable. File names are hashes, never UIDs (folder listings end up in
support tickets).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from listener.paths import spool_name

__all__ = ["Spool"]


class Spool:
    """``clean``: drop what a crash left in ``tmp``; only the process that owns that folder (the
    front-end) may, as another one (the review app) would delete files being written.

    ``owner`` gives a front-end a ``tmp`` folder of its own (``tmp/<owner>/``): front-ends
    sharing one spool (an NFS mount, or several on one host) then clean only their own leftovers,
    never a file another one is writing. Named by host and port, it is the same folder again
    after a restart, so a crash's leftovers are found."""

    def __init__(self, root: str | Path, clean: bool = True, owner: str | None = None) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp" / owner if owner else self.root / "tmp"
        self.instances = self.root / "instances"
        for folder in (self.tmp, self.instances):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir() if clean else ():  # a crash mid-write: never acknowledged
            if leftover.is_file():  # not another front-end's folder
                leftover.unlink(missing_ok=True)

    def instance_path(self, study_uid: str, sop_instance_uid: str) -> Path:
        return self.instances / spool_name(study_uid) / f"{spool_name(sop_instance_uid)}.dcm"

    def write_durably(self, chunks, final_path: Path) -> Path:
        """Write ``chunks`` (bytes objects) to ``final_path`` all or nothing, durably."""
        final_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, final_path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(final_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final_path

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20
