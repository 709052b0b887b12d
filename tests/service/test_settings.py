"""Server settings: the named reviewers file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from leukoscope.errors import LeukoscopeError
from leukoscope.service.settings import Settings, load_reviewers


def test_reviewers_file(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    path = tmp_path / "reviewers.json"
    path.write_text(json.dumps({" Dr. A ": "a" * 16, "Dr. B": "b" * 16}))
    tokens = load_reviewers(path)
    assert tokens == {"a" * 16: "Dr. A", "b" * 16: "Dr. B"}
    settings = make_settings(host="0.0.0.0", reviewer_tokens=tokens)  # tokens, so may listen
    assert not settings.open_access
    with pytest.raises(ValueError, match="at least 16"):
        make_settings(reviewer_tokens={"short": "Dr. C"})
    for bad, problem in [
        ({"Dr. A": "x" * 16, "Dr. B": "x" * 16}, "share a token"),
        ([], "expected a JSON object"),
        ({"": "y" * 16}, "non-empty name"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(LeukoscopeError, match=problem):
            load_reviewers(path)
    with pytest.raises(LeukoscopeError, match="cannot read"):
        load_reviewers(tmp_path / "missing.json")
