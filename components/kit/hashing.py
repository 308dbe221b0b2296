"""sha256 of files, memoised by (path, size, mtime): a run reads the teacher from several stages but hashes
each of its files once (the stage cache and the soft-target keys both need them). And the sha256 a prepared
data folder records of its source data, which every report and registry version carries."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def prepared_sha256(prepared: Path) -> str | None:
    """The `sha256` the data stage of any task writes into `data_card.json`; None without a card."""
    card = Path(prepared) / "data_card.json"
    if not card.is_file():
        return None
    return json.loads(card.read_text()).get("sha256") or None
