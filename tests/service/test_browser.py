"""End to end: Chromium (headless, through Playwright) drives the page against a real uvicorn
server: upload, results, differential, reclassification by key, sign-off, screenshot."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.service.conftest import N_CELLS, cell_jpeg

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"Chromium not installed at {CHROMIUM} (apt-get install chromium)",
)


DROP_FILES = """(items) => {
  const transfer = new DataTransfer();
  for (const [name, hex] of items) {
    const bytes = new Uint8Array(hex.match(/../g).map((h) => parseInt(h, 16)));
    transfer.items.add(new File([bytes], name, { type: "image/jpeg" }));
  }
  return transfer;
}"""
"""A DataTransfer holding the given files, as a drag-and-drop from the desktop carries."""


@pytest.fixture
def server_url(make_server: Callable[..., str]) -> str:
    """Three files per request so the page sends batches."""
    return make_server(max_files=3)


def test_upload_review_and_sign_off_in_chromium(server_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    images = []
    for i in range(N_CELLS):
        images.append(tmp_path / f"cell_{i}.jpg")
        images[-1].write_bytes(cell_jpeg(i))
    (tmp_path / "notes.jpg").write_text("not an image")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server_url)
        expect(page.locator("#model-info")).to_contain_text("squeezenet1_1")

        page.fill("#reviewer", "Dr. Browser")
        page.fill("#sample-name", "Smear 42")
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#sample-title")).to_have_text("Smear 42")

        # Half the images dropped on the drop zone, the rest through the file picker.
        half = N_CELLS // 2
        dropped = page.evaluate_handle(
            DROP_FILES, [[p.name, p.read_bytes().hex()] for p in images[:half]]
        )
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
        expect(page.locator("#upload-status")).to_contain_text(f"{half} image(s) classified.")
        page.set_input_files("#file-input", [*images[half:], tmp_path / "notes.jpg"])
        expect(page.locator("#upload-status")).to_contain_text(
            f"{N_CELLS - half} image(s) classified, 1 rejected"
        )
        expect(page.locator("#upload-errors")).to_contain_text("notes.jpg: not an image")
        rows = page.locator("#results-body tr")
        expect(rows).to_have_count(N_CELLS)
        expect(rows.first).to_contain_text("cell_0.jpg")
        expect(rows.first.locator("img")).to_have_js_property("complete", True)

        unidentified = page.locator('[data-group="unidentified"] button.cell')
        n_unidentified = unidentified.count()
        assert 0 < n_unidentified < N_CELLS
        expect(page.locator("#signoff-button")).to_be_disabled()
        total = page.locator("#differential-body [data-total]")
        expect(total).to_have_text(str(N_CELLS - n_unidentified))
        expect(page.locator("#differential-body")).to_contain_text(
            f"Unidentified, not counted until classified: {n_unidentified}."
        )
        expect(page.locator("#differential-body .flags li").first).to_be_visible()

        # Reclassify a classified cell by key: select it, press the digit of another class.
        classified = page.locator('#gallery section:not([data-group="unidentified"]) button.cell')
        classified.first.click()
        group = classified.first.locator("xpath=ancestor::section[1]").get_attribute("data-group")
        classes = page.evaluate(
            "() => fetch('/api/model').then(r => r.json()).then(m => m.classes)"
        )
        target = next(name for name in classes if name != group)
        count = page.locator(f'#differential-body tr[data-class="{target}"] [data-count]')
        before = int(count.inner_text())
        expect(page.locator("#detail-body .cell-name")).to_be_visible()
        page.keyboard.press(str(classes.index(target) + 1))
        expect(count).to_have_text(str(before + 1))
        expect(page.locator(f'[data-group="{target}"] button.cell.corrected')).to_have_count(1)

        # The selected cell is shown with its heatmap; H hides and shows it.
        figures = page.locator("#detail-body figure")
        expect(figures).to_have_count(2)
        expect(figures.nth(1).locator("img")).to_have_js_property("complete", True)
        assert figures.nth(1).locator("img").evaluate("img => img.naturalWidth") > 0
        page.keyboard.press("h")
        expect(figures).to_have_count(1)
        page.keyboard.press("h")
        expect(figures).to_have_count(2)

        # Resolve the unidentified cells: select each, accept the suggestion with Enter.
        for _ in range(n_unidentified):
            unidentified.first.click()
            page.keyboard.press("Enter")
            expect(page.locator('[data-group="unidentified"] button.cell')).to_have_count(
                n_unidentified - 1
            )
            n_unidentified -= 1
        expect(page.locator("#signoff-button")).to_be_enabled()
        expect(total).to_have_text(str(N_CELLS))
        page.get_by_role("button", name="Sign off sample").click()
        expect(page.locator("#signoff-state")).to_contain_text("Signed off by Dr. Browser")
        expect(page.locator("#sample-status")).to_contain_text("read-only")
        expect(page.locator(".class-buttons button").first).to_be_disabled()

        shot = tmp_path / "review.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 10_000
    if os.environ.get("LEUKOSCOPE_SCREENSHOT"):
        shutil.copy(shot, os.environ["LEUKOSCOPE_SCREENSHOT"])
