"""Cell classes, the tasks built from them, and the one table of folder-name aliases.

Datasets spell class folders many ways (``Basophil``, ``basophils``, ``BAS``, ``IG``,
``immature granulocyte``...). Every command resolves folder names through :func:`canonical_class`
so that a single table decides what a folder means.
"""

from __future__ import annotations

import re

PBC8: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""The eight classes of the PBC dataset (Acevedo et al. 2020), in its folder order."""

WBC5: tuple[str, ...] = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
"""The five white-blood-cell classes used by the reference study."""

TASKS: dict[str, tuple[str, ...]] = {"wbc5": WBC5, "pbc8": PBC8}

CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "basophil": ("basophils", "baso", "bas", "ba"),
    "eosinophil": ("eosinophils", "eos", "eo"),
    "erythroblast": (
        "erythroblasts",
        "erb",
        "ery",
        "nrbc",
        "nucleated red blood cell",
        "nucleated red blood cells",
    ),
    "ig": (
        "igs",
        "immature granulocyte",
        "immature granulocytes",
        "immature grans",
        "imm gran",
    ),
    "lymphocyte": ("lymphocytes", "lymph", "lym", "ly"),
    "monocyte": ("monocytes", "mono", "mon", "mo"),
    "neutrophil": ("neutrophils", "neut", "neu", "ne", "seg", "segmented neutrophil"),
    "platelet": ("platelets", "plt", "thrombocyte", "thrombocytes"),
}
"""Canonical class name -> accepted alternative spellings (compared case-insensitively,
with ``_``/``-``/spaces treated alike)."""


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


_LOOKUP: dict[str, str] = {
    _normalise(alias): canonical
    for canonical, aliases in CLASS_ALIASES.items()
    for alias in (canonical, *aliases)
}


def canonical_class(name: str) -> str | None:
    """Return the canonical class for a folder or label name, or ``None`` if it is unknown."""
    return _LOOKUP.get(_normalise(name))


def resolve_classes(spec: str) -> tuple[str, ...]:
    """Turn ``wbc5``, ``pbc8`` or a comma-separated list of class names into canonical classes.

    The result keeps PBC order for named tasks and the given order for explicit lists.
    """
    key = spec.strip().lower()
    if key in TASKS:
        return TASKS[key]
    names = [part for part in (p.strip() for p in spec.split(",")) if part]
    if not names:
        raise ValueError("no classes given: use wbc5, pbc8 or a comma-separated list of names")
    resolved: list[str] = []
    for name in names:
        canonical = canonical_class(name)
        if canonical is None:
            known = ", ".join(PBC8)
            raise ValueError(f"unknown class {name!r}: known classes are {known}")
        if canonical in resolved:
            raise ValueError(f"class {name!r} is given twice")
        resolved.append(canonical)
    if len(resolved) < 2:
        raise ValueError("a classification task needs at least two classes")
    return tuple(resolved)
