import pytest

from leukoscope.classes import PBC8, WBC5, canonical_class, resolve_classes


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Basophil", "basophil"),
        ("basophils", "basophil"),
        ("BAS", "basophil"),
        ("NEU", "neutrophil"),
        ("neutrophil", "neutrophil"),
        ("ig", "ig"),
        ("IG", "ig"),
        ("immature granulocyte", "ig"),
        ("Immature_Granulocytes", "ig"),
        ("platelets", "platelet"),
        ("erythroblast", "erythroblast"),
        ("monocytes", "monocyte"),
        ("Lymphocyte", "lymphocyte"),
        ("red cell", None),
        ("misc", None),
    ],
)
def test_canonical_class(name: str, expected: str | None) -> None:
    assert canonical_class(name) == expected


def test_resolve_named_tasks_and_lists() -> None:
    assert resolve_classes("wbc5") == WBC5
    assert resolve_classes("PBC8") == PBC8
    assert resolve_classes("Neutrophil, LY") == ("neutrophil", "lymphocyte")


@pytest.mark.parametrize("spec", ["", "neutrophil", "neutrophil,foo", "neu,neutrophil"])
def test_resolve_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        resolve_classes(spec)
