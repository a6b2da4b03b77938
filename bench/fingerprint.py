"""Fingerprint a run folder, to check that a refactor changed no weight and no number.

    python -m bench.fingerprint runs/smoke > after.txt      # on each code version, same config and seed
    diff before.txt after.txt                               # empty: same tensors, metadata and outputs

One line per file: a short sha256 and the path. safetensors: every tensor's bytes plus the parsed metadata (the
header's key order is random, so whole-file hashes differ between identical runs); JSON / JSONL: parsed content
minus wall-clock seconds and the 12-character checkpoint hashes (they follow the header order), with the run
folder's own path written as `<run>` (so two folders compare); everything else (npz, NIfTI, PNG, CSV): raw bytes. `report.md` and `timings.json` hold wall-clock times and are skipped.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

SKIPPED = ("report.md", "timings.json")
FILE_HASH = re.compile(r"[0-9a-f]{12}")  # ddpm.checkpoint.file_sha256's short hash


def clean(value: Any, root: str) -> Any:
    """JSON content without wall-clock seconds and checkpoint file hashes; the run folder's path as <run>."""
    if isinstance(value, dict):
        return {k: clean(v, root) for k, v in value.items()
                if k != "sec" and not (isinstance(v, str) and FILE_HASH.fullmatch(v))}
    if isinstance(value, list):
        return [clean(v, root) for v in value]
    return value.replace(root, "<run>") if isinstance(value, str) else value


def file_digest(path: Path, root: str) -> str:
    digest = hashlib.sha256()
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        for key in sorted(tensors):
            digest.update(key.encode())
            digest.update(tensors[key].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        with safe_open(path, "pt") as handle:
            meta = handle.metadata() or {}
        meta = {k: clean(json.loads(v), root) if v.startswith("{") else v for k, v in meta.items()}
        digest.update(json.dumps(meta, sort_keys=True).encode())
    elif path.suffix == ".json":
        digest.update(json.dumps(clean(json.loads(path.read_text()), root), sort_keys=True).encode())
    elif path.suffix == ".jsonl":
        for line in path.read_text().splitlines():
            digest.update(json.dumps(clean(json.loads(line), root), sort_keys=True).encode())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(root: Path) -> list[str]:
    """'<digest> <path>' for every file under root; cache names carry a config hash and are generalised."""
    lines = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name in SKIPPED:
            continue
        name = path.relative_to(root).as_posix()
        for prefix in ("cache/latents-", "cache/slices-"):
            if name.startswith(prefix):
                name = prefix + "*" + path.suffix
        lines.append(f"{file_digest(path, str(root))} {name}")
    return sorted(lines, key=lambda line: line.split(" ", 1)[::-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder, e.g. runs/smoke")
    args = parser.parse_args(argv)
    print("\n".join(fingerprint(args.run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
