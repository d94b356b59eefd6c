"""A directory spool of probe reports: written atomically before sending, deleted after the ack.

Layout: ``<dir>/<report_id>.json`` waiting to be sent, ``<dir>/rejected/<report_id>.json`` refused by
the collector with a 4xx (kept for a human, never resent automatically). A write is tmp file + fsync +
rename + fsync of the directory, so after a crash a spooled file is either complete or absent.
Standard library only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

REJECTED = "rejected"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Spool:
    """Reports waiting for delivery, one JSON file each, named by ``report_id``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)

    def path(self, report_id: str) -> Path:
        if not _NAME.match(report_id):
            raise ValueError(f"report_id: not usable as a file name: {report_id[:40]!r}")
        return self.dir / f"{report_id}.json"

    def write(self, report: dict[str, Any]) -> Path:
        """Store ``report`` durably (atomic rename, fsync'ed); overwrites a spooled copy of the same id."""
        report_id = str(report.get("report_id", ""))
        final = self.path(report_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{report_id}.{os.getpid()}.tmp"
        data = json.dumps(report, separators=(",", ":")).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.dir)
        return final

    def pending(self) -> list[Path]:
        """Spooled reports waiting to be sent, oldest first (by modification time)."""
        if not self.dir.is_dir():
            return []
        files = [p for p in self.dir.glob("*.json") if p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def read(self, path: Path) -> dict[str, Any]:
        """The report stored at ``path``; ``ValueError`` if the file is not a JSON object."""
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError(f"{path.name}: not a JSON object")
        return data

    def delete(self, path: Path) -> None:
        """Remove a delivered report (missing is fine: another flush delivered it)."""
        path.unlink(missing_ok=True)
        fsync_dir(self.dir)

    def reject(self, path: Path, reason: str) -> Path:
        """Move a report the collector refused to ``rejected/``, with the reason next to it."""
        rej = self.dir / REJECTED
        rej.mkdir(parents=True, exist_ok=True)
        dest = rej / path.name
        reason_file = rej / (path.stem + ".reason.txt")
        reason_file.write_text(reason + "\n")
        os.replace(path, dest)
        fsync_dir(rej)
        fsync_dir(self.dir)
        return dest

    def rejected(self) -> list[Path]:
        """Reports the collector refused."""
        rej = self.dir / REJECTED
        return sorted(rej.glob("*.json")) if rej.is_dir() else []


def fsync_dir(d: Path) -> None:
    """Make the directory entries of ``d`` (files created, renamed or deleted in it) durable."""
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
