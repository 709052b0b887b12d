"""The review database under concurrent clients: a sign-off is atomic with reclassifications
and every stored correction names the label the cell really had, on SQLite and PostgreSQL.

Real concurrency: a uvicorn server runs each request in its thread pool while several client
threads send reclassifications at once and another signs the sample off.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime

import httpx

from leukoscope.classes import WBC5
from tests.service.conftest import N_CELLS, cells

CLIENTS = 4
RELABELS = 20
ROUNDS = 2


def _initial_call(cell: dict) -> str | None:
    prediction = cell["prediction"]
    return None if prediction["uncertain"] else prediction["label"]


def assert_history_consistent(sample: dict) -> None:
    """Each correction starts from the label the previous one (or the model) left."""
    for cell in sample["cells"]:
        current = _initial_call(cell)
        for correction in cell["corrections"]:
            assert correction["from_label"] == current, f"cell {cell['position']}: stale from"
            current = correction["to_label"]
        assert cell["label"] == current


def assert_signoff_matches(sample: dict) -> None:
    """The differential frozen at sign-off is the one of the cells' final labels, and no
    correction was stored after the sign-off."""
    signed_at = datetime.fromisoformat(sample["signoff"]["signed_at"])
    for cell in sample["cells"]:
        for correction in cell["corrections"]:
            assert datetime.fromisoformat(correction["created_at"]) <= signed_at
    counts = {name: 0 for name in sample["classes"]}
    for cell in sample["cells"]:
        counts[cell["label"]] += 1
    frozen = {row["class"]: row["count"] for row in sample["signoff"]["differential"]["rows"]}
    assert frozen == counts


def _reviewer(url: str, cell_ids: list[str], seed: int, statuses: list[int]) -> None:
    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(RELABELS):
            body = {"label": rng.choice(WBC5), "reviewer": f"reviewer {seed}"}
            response = client.post(f"/api/cells/{rng.choice(cell_ids)}/label", json=body)
            statuses.append(response.status_code)
            if response.status_code == 409:  # signed off meanwhile
                break


def _concurrent_review(url: str, *, sign: bool) -> dict:
    """CLIENTS reviewers reclassify the cells of one sample at once; with ``sign``, the sample
    is signed off while they are at it."""
    with httpx.Client(base_url=url, timeout=60) as client:
        sample = client.post("/api/samples", json={"name": "concurrent"}).json()
        added = client.post(f"/api/samples/{sample['id']}/cells", files=cells()).json()["added"]
        for cell in added:  # nothing unidentified, so the sample can be signed at any time
            if cell["label"] is None:
                body = {"label": cell["prediction"]["label"], "reviewer": "setup"}
                client.post(f"/api/cells/{cell['id']}/label", json=body)
        ids = [cell["id"] for cell in added]
        statuses: list[int] = []  # list.append is atomic
        threads = [
            threading.Thread(target=_reviewer, args=(url, ids, k, statuses)) for k in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        if sign:
            while statuses.count(200) < 2 * CLIENTS and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            signed = client.post(f"/api/samples/{sample['id']}/signoff", json={"reviewer": "B"})
            assert signed.status_code == 200, signed.text
        for thread in threads:
            thread.join()
        assert set(statuses) <= {200, 409} and statuses.count(200) > 0, statuses
        if not sign:
            assert statuses.count(200) == CLIENTS * RELABELS
        return client.get(f"/api/samples/{sample['id']}").json()


def _check_backend(make_server: Callable[..., str], **settings: str) -> None:
    url = make_server(**settings)
    sample = _concurrent_review(url, sign=False)
    assert len(sample["cells"]) == N_CELLS
    assert_history_consistent(sample)
    for _ in range(ROUNDS):
        signed = _concurrent_review(url, sign=True)
        assert_history_consistent(signed)
        assert_signoff_matches(signed)


def test_concurrent_reviews_and_sign_off_on_sqlite(make_server: Callable[..., str]) -> None:
    _check_backend(make_server)


def test_concurrent_reviews_and_sign_off_on_postgresql(
    make_server: Callable[..., str], postgres_url: str
) -> None:
    _check_backend(make_server, db_url=postgres_url)
