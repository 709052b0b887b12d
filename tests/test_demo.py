"""The demo's sample: evenly spaced through each class, at most the number asked for."""

from __future__ import annotations

from pathlib import Path

from leukoscope.data.datasets import Sample, evenly_spaced
from leukoscope.demo import audit_sample


def test_sample_is_spread_through_each_class() -> None:
    samples = [Sample(Path(f"a{i}.jpg"), 0) for i in range(10)]
    samples += [Sample(Path(f"b{i}.jpg"), 1) for i in range(3)]
    picked = evenly_spaced(samples, 3)
    assert [s.path.name for s in picked] == [
        "a0.jpg",
        "a4.jpg",
        "a8.jpg",
        "b0.jpg",
        "b1.jpg",
        "b2.jpg",
    ]


def test_without_a_model_the_sample_is_audited(pbc_root: Path, tmp_path: Path) -> None:
    report = audit_sample(pbc_root, 2, tmp_path)
    assert sum(entry["files"] for entry in report["classes"].values()) == 16
    assert (tmp_path / "audit.json").is_file()
    assert "audit of 2 images per class" in (tmp_path / "report.md").read_text()
