import json
from pathlib import Path

from leukoscope.data.audit import audit_folder, summary_lines


def _paths(items: list[dict[str, object]]) -> set[str]:
    return {str(item["path"]) for item in items}


def test_audit_finds_every_defect(messy_dataset: Path) -> None:
    report = audit_folder(messy_dataset, workers=1)
    assert set(report["classes"]) == {"basophil", "eosinophil", "lymphocyte", "neutrophil"}
    assert report["classes"]["basophil"]["folders"] == ["Basophil"]
    assert report["classes"]["basophil"]["files"] == 14
    assert report["unknown_folders"] == ["notes"]
    assert report["loose_files"] == ["README.txt"]
    problems = report["problems"]
    assert _paths(problems["zero_byte"]) == {"NEU/empty.jpg"}
    assert _paths(problems["non_image"]) == {"NEU/readme.jpg"}
    assert _paths(problems["hidden"]) == {"NEU/.DS_Store"}
    assert _paths(problems["truncated"]) == {"LY/cut.jpg"}
    assert _paths(problems["too_large"]) == {"NEU/bomb.png"}
    within = report["exact_duplicates"]["within_class"]
    assert [sorted(g["paths"]) for g in within] == [
        ["Basophil/Ba_001.jpg", "Basophil/Ba_001_copy.jpg"]
    ]
    across = report["exact_duplicates"]["across_classes"]
    assert [sorted(g["paths"]) for g in across] == [["LY/LY_005.jpg", "NEU/NE_conflict.jpg"]]
    assert across[0]["labels"] == ["lymphocyte", "neutrophil"]
    near = report["near_duplicates"]["pairs"]
    assert [sorted(p["paths"]) for p in near] == [
        ["Basophil/Ba_002.jpg", "Basophil/Ba_002_requality.jpg"]
    ]
    assert report["images"]["sizes"] == {"96x96": report["n_usable"]}
    assert report["images"]["modes"] == {"RGB": report["n_usable"]}
    json.dumps(report)  # JSON-ready


def test_summary_names_the_conflict(messy_dataset: Path) -> None:
    lines = summary_lines(audit_folder(messy_dataset, workers=1))
    text = "\n".join(lines)
    assert "label conflict" in text and "NEU/NE_conflict.jpg" in text
    assert "1 truncated file(s): LY/cut.jpg" in text


def test_sample_limits_files_per_class(messy_dataset: Path) -> None:
    report = audit_folder(messy_dataset, sample_per_class=3, workers=1)
    assert all(entry["files"] == 3 for entry in report["classes"].values())


def test_audit_on_real_pbc_sample(pbc_sample: Path) -> None:
    report = audit_folder(pbc_sample, workers=2)
    assert len(report["classes"]) == 8
    assert report["n_usable"] == 48
    assert all(fmt == "JPEG" for fmt in report["images"]["formats"])
