import csv
from pathlib import Path

import pytest

from leukoscope.classes import WBC5
from leukoscope.data.scan import list_class_files, scan_files
from leukoscope.data.split import assign_splits, split_folder, write_manifest
from leukoscope.errors import LeukoscopeError

CLASSES = ("basophil", "eosinophil", "lymphocyte", "neutrophil")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_split_is_leakage_free_and_excludes_conflicts(messy_dataset: Path, tmp_path: Path) -> None:
    result = split_folder(messy_dataset, CLASSES, seed=1, val=0.25, test=0.25, workers=1)
    by_path = {r.path: r for r in result.rows}
    excluded = {e.path: e.reason for e in result.excluded}
    # defects and both sides of the label conflict are out, with reasons
    for bad in ["NEU/empty.jpg", "NEU/readme.jpg", "NEU/.DS_Store", "LY/cut.jpg", "NEU/bomb.png"]:
        assert bad in excluded and bad not in by_path
    assert "label conflict" in excluded["LY/LY_005.jpg"]
    assert "label conflict" in excluded["NEU/NE_conflict.jpg"]
    # one copy of a byte-identical pair is kept; near-duplicates share a split
    assert "Basophil/Ba_001.jpg" in by_path and "copy of" in excluded["Basophil/Ba_001_copy.jpg"]
    assert by_path["Basophil/Ba_002.jpg"].split == by_path["Basophil/Ba_002_requality.jpg"].split
    # no sha256 appears in two splits
    splits_of: dict[str, set[str]] = {}
    for row in result.rows:
        splits_of.setdefault(row.sha256, set()).add(row.split)
    assert all(len(s) == 1 for s in splits_of.values())
    # stratified: every class in every split
    for label, per in result.counts().items():
        assert all(n > 0 for n in per.values()), label


def test_manifest_is_byte_identical_for_same_inputs(messy_dataset: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a.csv", "b.csv"):
        result = split_folder(messy_dataset, CLASSES, seed=7, val=0.2, test=0.2, workers=1)
        write_manifest(result, messy_dataset, tmp_path / name)
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
    other = split_folder(messy_dataset, CLASSES, seed=8, val=0.2, test=0.2, workers=1)
    write_manifest(other, messy_dataset, tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_bytes() != outs[0]
    rows = _rows(tmp_path / "a.csv")
    assert list(rows[0]) == ["path", "label", "split", "sha256"]
    assert all((tmp_path / r["path"]).is_file() for r in rows)  # relative to the manifest
    assert (tmp_path / "a.excluded.csv").is_file()


def test_fractions_are_respected(messy_dataset: Path) -> None:
    files = list_class_files(messy_dataset)
    records = scan_files(messy_dataset, files, workers=1)
    result = assign_splits(records, CLASSES, seed=0, val=0.0, test=0.5)
    for per in result.counts().values():
        assert per["val"] == 0
        assert abs(per["test"] - per["train"]) <= 2


def test_bad_fractions_and_missing_classes(messy_dataset: Path) -> None:
    with pytest.raises(LeukoscopeError, match="fractions"):
        split_folder(messy_dataset, CLASSES, seed=0, val=0.6, test=0.5, workers=1)
    with pytest.raises(LeukoscopeError, match="monocyte"):
        split_folder(messy_dataset, WBC5, seed=0, val=0.1, test=0.1, workers=1)


def test_real_pbc_sample_split(pbc_sample: Path, tmp_path: Path) -> None:
    result = split_folder(pbc_sample, WBC5, seed=0, val=0.2, test=0.2, workers=2)
    assert {r.label for r in result.rows} == set(WBC5)
    assert len({r.sha256 for r in result.rows}) == len(result.rows)
