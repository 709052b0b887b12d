"""Walking a dataset folder: class folders, per-file checks, content hashes, duplicates.

Both ``data audit`` and ``data split`` start here, so what the audit reports is exactly what the
split acts on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import imagehash
import numpy as np

from leukoscope.classes import canonical_class
from leukoscope.data.images import DEFAULT_MAX_PIXELS, open_image, to_rgb
from leukoscope.errors import ImageDecodeError, LeukoscopeError

PHASH_SIZE = 16
"""Perceptual hash side (256 bits)."""

NEAR_DUPLICATE_BITS = 48
"""Hamming distance (of 256) at or below which two images count as near-duplicates. On PBC,
the closest unrelated cells differ by 66 bits or more; a re-encoded copy (8 bits) and a
slightly shifted re-capture (40 bits) of the same cell fall well below."""


@dataclass
class FileRecord:
    """What a scan learns about one file under a class folder."""

    path: str
    """Path relative to the dataset root, with forward slashes."""
    folder: str
    label: str | None
    size: int
    sha256: str
    problem: str | None = None
    """``hidden``, ``zero_byte``, ``non_image``, ``truncated``, ``too_large`` or ``unreadable``."""
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    phash: str | None = None

    @property
    def usable(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class ClassFolders:
    """The class folders found under a dataset root."""

    folders: dict[str, list[Path]]
    """Canonical class -> the folders that map to it (several spellings may coexist)."""
    unknown: list[str]
    """Sub-folders whose names are not a known class."""
    loose_files: list[str]
    """Files directly under the root (ignored for training)."""


def find_class_folders(root: str | Path) -> ClassFolders:
    """Map the sub-folders of ``root`` to canonical classes through the alias table."""
    root = Path(root)
    if not root.exists():
        raise LeukoscopeError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise LeukoscopeError(f"{root}: not a folder")
    folders: dict[str, list[Path]] = {}
    unknown: list[str] = []
    loose: list[str] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
            if entry.name.startswith("."):
                continue
            label = canonical_class(entry.name)
            if label is None:
                unknown.append(entry.name)
            else:
                folders.setdefault(label, []).append(entry)
        else:
            loose.append(entry.name)
    if not folders:
        raise LeukoscopeError(
            f"{root}: no class folders found (expected sub-folders such as basophil/, "
            "eosinophil/, lymphocyte/, monocyte/, neutrophil/)"
        )
    return ClassFolders(folders=folders, unknown=unknown, loose_files=loose)


def list_class_files(root: str | Path, classes: Iterable[str] | None = None) -> list[Path]:
    """Every file (hidden ones included) under the class folders of ``root``, sorted, and every
    link there: one that leads nowhere, loops or names a folder is then reported, not lost."""
    found = find_class_folders(root)
    wanted = set(classes) if classes is not None else None
    files: list[Path] = []
    for label, dirs in found.folders.items():
        if wanted is not None and label not in wanted:
            continue
        for folder in dirs:
            # Links that cannot be followed stay in, so the scan reports them as unreadable.
            files.extend(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    return sorted(files)


def inspect_file(path: Path, root: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileRecord:
    """Check one file: hash its bytes, try to decode it, and take its perceptual hash."""
    rel = path.relative_to(root)
    folder = rel.parts[0]
    try:
        data = path.read_bytes()
    except OSError as exc:  # no permission, removed mid-scan, I/O error, unfollowable link
        reason = exc.strerror or str(exc)
        detail = (
            f"link to {os.readlink(path)} cannot be followed ({reason})"
            if path.is_symlink()
            else f"cannot read file ({reason})"
        )
        return FileRecord(
            path=rel.as_posix(),
            folder=folder,
            label=canonical_class(folder),
            size=0,
            sha256="",
            problem="unreadable",
            detail=detail,
        )
    record = FileRecord(
        path=rel.as_posix(),
        folder=folder,
        label=canonical_class(folder),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    if any(part.startswith(".") for part in rel.parts):
        record.problem, record.detail = "hidden", "hidden file (name starts with '.')"
        return record
    if not data:
        record.problem, record.detail = "zero_byte", "empty file (0 bytes)"
        return record
    try:
        image = open_image(data, name=record.path, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        record.problem, record.detail = exc.kind, exc.reason
        return record
    record.width, record.height = image.size
    record.mode, record.format = image.mode, image.format
    thumb = to_rgb(image)
    thumb.thumbnail((128, 128))
    record.phash = str(imagehash.phash(thumb, hash_size=PHASH_SIZE))
    return record


def _inspect_chunk(args: tuple[list[str], str, int]) -> list[FileRecord]:
    paths, root, max_pixels = args
    return [inspect_file(Path(p), Path(root), max_pixels) for p in paths]


def scan_files(
    root: str | Path,
    files: Sequence[Path],
    *,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int], None] | None = None,
) -> list[FileRecord]:
    """Inspect ``files`` (under ``root``) in parallel; records come back in input order."""
    root = Path(root)
    workers = workers or min(4, os.cpu_count() or 1)
    chunk = 64
    jobs = [
        ([str(p) for p in files[i : i + chunk]], str(root), max_pixels)
        for i in range(0, len(files), chunk)
    ]
    records: list[FileRecord] = []
    if workers <= 1 or len(jobs) <= 1:
        results: Iterable[list[FileRecord]] = map(_inspect_chunk, jobs)
        for batch in results:
            records.extend(batch)
            if on_progress:
                on_progress(len(batch))
        return records
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for batch in pool.map(_inspect_chunk, jobs):
            records.extend(batch)
            if on_progress:
                on_progress(len(batch))
    return records


def exact_duplicate_groups(records: Sequence[FileRecord]) -> list[list[int]]:
    """Indices of non-empty files sharing the same bytes, one list per group of two or more."""
    by_hash: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        if rec.size > 0 and rec.problem != "hidden":
            by_hash.setdefault(rec.sha256, []).append(i)
    return [group for group in by_hash.values() if len(group) > 1]


def near_duplicate_pairs(
    records: Sequence[FileRecord], max_bits: int = NEAR_DUPLICATE_BITS
) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, distance)`` of decodable, byte-different images whose perceptual hashes
    differ by at most ``max_bits``."""
    idx = [i for i, rec in enumerate(records) if rec.phash is not None]
    if len(idx) < 2:
        return []
    bits = np.array(
        [np.frombuffer(bytes.fromhex(records[i].phash or ""), dtype=">u8") for i in idx],
        dtype=np.uint64,
    )
    pairs: list[tuple[int, int, int]] = []
    block = 512
    for start in range(0, len(idx), block):
        chunk = bits[start : start + block]
        dist = np.bitwise_count(chunk[:, None, :] ^ bits[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(dist <= max_bits)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i, j = idx[start + r], idx[c]
            if i < j and records[i].sha256 != records[j].sha256:
                pairs.append((i, j, int(dist[r, c])))
    return sorted(pairs)


def duplicate_clusters(
    n: int, exact: Iterable[Sequence[int]], near: Iterable[tuple[int, int, int]]
) -> list[list[int]]:
    """Union exact groups and near-duplicate pairs into clusters (lists of indices, sorted).

    Every index ``0..n-1`` belongs to exactly one cluster; singletons included.
    """
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for group in exact:
        for other in group[1:]:
            union(group[0], other)
    for i, j, _ in near:
        union(i, j)
    clusters: dict[int, list[int]] = {}
    for i in range(n):
        clusters.setdefault(find(i), []).append(i)
    return sorted(clusters.values())
