"""End to end: Chromium (headless, through Playwright) drives the page against a real uvicorn
server: upload, results, differential, reclassification by key, exclusion, comments, the URL
of a sample, confirmed sign-off, amendment, and the layout at four widths (screenshots, no
sideways scrolling, the selected cell in view)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.service.conftest import N_CELLS, cell_jpeg

if TYPE_CHECKING:
    from playwright.sync_api import Page

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


WIDTHS = (1440, 1024, 800, 390)

OVERFLOW = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [...document.querySelectorAll("body *")].filter((node) => {
    const box = node.getBoundingClientRect();
    return box.width && box.right > width + 1 && !node.closest(".table-scroll");
  });
  return {
    scroll: document.documentElement.scrollWidth - width,
    wide: wide.slice(0, 5).map((node) => node.id || node.className || node.tagName),
  };
}"""
"""How far the page scrolls sideways, and the first elements that stick out (those inside a
scrolling table box may)."""

IN_VIEW = """(selector) => {
  const node = document.querySelector(selector);
  const box = node.getBoundingClientRect();
  const panel = node.closest(".side").getBoundingClientRect();
  return box.top >= Math.max(0, panel.top) && box.top < window.innerHeight - 40;
}"""
"""The element's top is on screen and not scrolled out of the top of its side panel."""


@contextmanager
def chromium_page(url: str) -> Iterator[Page]:
    """A page of headless Chromium at ``url`` (1400x1100, 20 s timeouts); the test fails if a
    script on it raised an error."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        yield page
        browser.close()
    assert errors == [], errors


def cell_files(folder: Path, count: int) -> list[Path]:
    """``count`` synthetic cell images written to ``folder`` as ``cell_<i>.jpg``."""
    paths = [folder / f"cell_{i}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(cell_jpeg(i))
    return paths


def create_sample(page: Page, name: str, reviewer: str | None = "Dr. Browser") -> None:
    """Create the sample ``name`` on the page (as ``reviewer``) and wait until it is open."""
    from playwright.sync_api import expect

    if reviewer is not None:
        page.fill("#reviewer", reviewer)
    page.fill("#sample-name", name)
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#sample-title")).to_have_text(name)


@pytest.fixture
def server_url(make_server: Callable[..., str]) -> str:
    """Three files per request so the page sends batches."""
    return make_server(max_files=3)


def test_upload_review_and_sign_off_in_chromium(server_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    images = cell_files(tmp_path, N_CELLS)
    (tmp_path / "notes.jpg").write_text("not an image")
    with chromium_page(server_url) as page:
        expect(page.locator("#model-info")).to_contain_text("squeezenet1_1")

        create_sample(page, "Smear 42")

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
        expect(page.locator("#sample-list [aria-current=true]")).to_contain_text(
            f"{n_unidentified} unidentified"
        )
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
        sidebar = page.locator("#sample-list [aria-current=true]")
        expect(sidebar).to_contain_text("0 unidentified"), "the sidebar follows the review"

        # Exclude a cell as an artefact (key X): it leaves the count and is listed apart.
        classified.first.click()
        page.keyboard.press("x")
        expect(total).to_have_text(str(N_CELLS - 1))
        expect(page.locator('[data-group="excluded"] button.cell')).to_have_count(1)
        expect(page.locator("#differential-body")).to_contain_text(
            "Excluded, not counted: artefact 1"
        )
        expect(sidebar).to_contain_text("1 excluded")

        page.fill("#comment-text", "Stain slightly pale")
        page.get_by_role("button", name="Add comment").click()
        expect(page.locator("#comment-list")).to_contain_text("Stain slightly pale")

        # The URL names the sample: a reload opens it again.
        assert "#sample=" in page.url
        page.reload()
        expect(page.locator("#sample-title")).to_have_text("Smear 42")
        expect(total).to_have_text(str(N_CELLS - 1))

        # Sign-off asks for confirmation first; cancel changes nothing.
        page.get_by_role("button", name="Sign off sample").click()
        dialog = page.locator("#signoff-dialog")
        expect(dialog).to_contain_text(f"{N_CELLS - 1} white cells counted, 1 artefact excluded")
        dialog.get_by_role("button", name="Cancel").click()
        expect(page.locator("#signoff-state")).not_to_contain_text("Signed off")
        page.get_by_role("button", name="Sign off sample").click()
        page.locator("#signoff-confirm").click()
        expect(page.locator("#signoff-state")).to_contain_text("Signed off by Dr. Browser")
        expect(page.locator("#sample-status")).to_contain_text("read-only")
        page.locator("#gallery button.cell").first.click()
        expect(page.locator(".class-buttons button").first).to_be_disabled()

        # An amendment after sign-off: recorded apart, with its reason.
        page.locator('[data-group="excluded"] button.cell').first.click()
        page.select_option("#amend-call", classes[0])
        page.fill("#amend-reason", "Not an artefact on second look")
        page.get_by_role("button", name="Record amendment").click()
        expect(page.locator("#amendments")).to_contain_text("Not an artefact on second look")
        expect(total).to_have_text(str(N_CELLS))
        expect(page.locator("#signoff-state")).to_contain_text("Signed off by Dr. Browser")

        # A comment typed at the bottom of the side panel scrolls it; a click on a cell must
        # still bring the cell into view.
        page.fill("#comment-text", "Amended after a second look")
        page.get_by_role("button", name="Add comment").click()
        expect(page.locator("#comment-list")).to_contain_text("Amended after a second look")
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            page.locator("#gallery button.cell").last.click()
            expect(page.locator("#detail-body .cell-name")).to_be_visible()
            assert page.evaluate(IN_VIEW, "#detail-body"), f"selected cell out of view at {width}"
            overflow = page.evaluate(OVERFLOW)
            assert overflow == {"scroll": 0, "wide": []}, f"{width} px: {overflow}"
            page.screenshot(path=str(tmp_path / f"review-{width}.png"), full_page=True)

    shots = [tmp_path / f"review-{width}.png" for width in WIDTHS]
    assert all(shot.stat().st_size > 10_000 for shot in shots)
    if os.environ.get("LEUKOSCOPE_SCREENSHOTS"):
        for shot in shots:
            shutil.copy(shot, Path(os.environ["LEUKOSCOPE_SCREENSHOTS"]) / shot.name)


def test_field_images_in_chromium(make_server: Callable[..., str], tmp_path: Path) -> None:
    """Field images: every cell found is in the gallery with its crop, and shows in its field
    with its box drawn."""
    from playwright.sync_api import expect

    from tests.service.test_fields import LEFT, jpeg

    url = make_server(max_file_bytes=2_000_000, max_request_bytes=8_000_000)
    field = tmp_path / "left.jpg"
    field.write_bytes(jpeg(LEFT))
    with chromium_page(url) as page:
        create_sample(page, "Fields", reviewer=None)
        page.check("#fields-mode")
        page.set_input_files("#file-input", [field])
        expect(page.locator("#upload-status")).to_contain_text(
            "2 white cell(s) found in 1 field(s) and classified."
        )
        expect(page.locator("#results-body tr")).to_have_count(2)
        page.locator("#gallery button.cell").first.click()
        expect(page.locator("#detail-body .cell-name")).to_contain_text("left.jpg cell")
        page.keyboard.press("f")
        image = page.locator("#detail-body .field-image")
        expect(image).to_have_js_property("complete", True)
        box = page.locator("#detail-body .field-box").bounding_box()
        shown = image.bounding_box()
        assert box is not None and shown is not None
        assert 0 < box["width"] < shown["width"] / 4 and box["x"] >= shown["x"]
        page.get_by_role("button", name="Hide field (F)").click()
        expect(page.locator("#detail-body .field-image")).to_have_count(0)


def test_a_shifted_sample_is_renormalised_in_chromium(
    make_server: Callable[..., str], tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The warning of a sample unlike the training data offers to renormalise; refused (too
    few cells left once three are excluded), the page says why and offers it again; done, it
    says by whom and on how many cells, and offers it no more."""
    from playwright.sync_api import expect

    from leukoscope.inference.predictor import Predictor
    from tests.inference.tiny import build_batchnorm
    from tests.service.conftest import FlagLowConfidence

    source = build_batchnorm(tmp_path_factory.getbasetemp() / "batchnorm").model_dir
    flag_all = FlagLowConfidence(Predictor.load(source, backend="torch"), 1.01)
    url = make_server(flag_all, model_path=source, max_files=40, max_request_bytes=4_000_000)
    images = cell_files(tmp_path, 35)
    with chromium_page(url) as page:
        create_sample(page, "Other lab")
        page.set_input_files("#file-input", images[:34])
        expect(page.locator("#upload-status")).to_contain_text(
            "34 image(s) classified.", timeout=20_000
        )
        expect(page.locator("#differential-body .shift-warning")).to_contain_text("Renormalising")
        for excluded in range(1, 4):  # 31 cells left to renormalise on
            page.locator('[data-group="unidentified"] button.cell').first.click()
            page.keyboard.press("x")
            expect(page.locator('[data-group="excluded"] button.cell')).to_have_count(excluded)
        button = page.get_by_role("button", name="Renormalise on this sample's cells")
        button.click()
        expect(page.locator("#message")).to_contain_text("fewer than 32 readable cells")
        expect(button).to_be_enabled()

        page.set_input_files("#file-input", images[34:])
        expect(page.locator("#upload-status")).to_contain_text("1 image(s) classified.")
        button.click()
        expect(page.locator("#differential-body .renormalised")).to_contain_text(
            "Renormalised by Dr. Browser", timeout=20_000
        )
        expect(page.locator("#differential-body .renormalised")).to_contain_text("on 32 of")
        expect(page.locator("#renormalise-button")).to_have_count(0)


def test_a_shifted_samples_cells_are_confirmed_in_chromium(
    make_server: Callable[..., str], predictor: Any, tmp_path: Path
) -> None:
    """On a sample unlike the training data even the model's confident calls must be
    confirmed (Enter, or a class group's button) or corrected before its flags are released
    and it can be signed off."""
    from playwright.sync_api import expect

    from tests.service.conftest import ExpectingFivePercent

    url = make_server(ExpectingFivePercent(predictor))
    images = cell_files(tmp_path, N_CELLS)
    with chromium_page(url) as page:
        create_sample(page, "Other lab")
        page.set_input_files("#file-input", images)
        expect(page.locator("#upload-status")).to_contain_text(f"{N_CELLS} image(s) classified.")
        expect(page.locator("#differential-body .shift-warning")).to_be_visible()
        unidentified = page.locator('[data-group="unidentified"] button.cell')
        flagged = unidentified.count()
        assert 0 < flagged < N_CELLS
        for left in reversed(range(flagged)):
            unidentified.first.click()
            page.keyboard.press("Enter")
            expect(unidentified).to_have_count(left)
        to_confirm = page.locator("#gallery button.cell.to-confirm")
        confident = N_CELLS - flagged
        expect(to_confirm).to_have_count(confident)
        expect(page.locator("#signoff-button")).to_be_disabled()
        expect(page.locator("#signoff-state")).to_contain_text(
            f"{confident} cell(s) have only the model's call"
        )
        expect(page.locator("#sample-status")).to_contain_text(f"{confident} to confirm")
        expect(page.locator("#differential-body .flags .withheld")).to_be_visible()
        to_confirm.last.click()
        first = page.locator('#gallery button.cell[aria-pressed="true"]').get_attribute("data-cell")
        for left in reversed(range(1, confident)):
            # Each confirmation moves on to the next cell waiting for one, from the top again.
            expect(page.locator("#detail-body")).to_contain_text("Confirm")
            page.keyboard.press("Enter")
            expect(page.locator("#upload-status")).to_contain_text("Cell confirmed as")
            expect(to_confirm).to_have_count(left)
        expect(page.locator("#signoff-button")).to_be_disabled()
        page.locator("#gallery .confirm-group").click()  # the last one, by its group's button
        expect(page.locator("#upload-status")).to_contain_text("1 cell(s) confirmed.")
        expect(to_confirm).to_have_count(0)
        expect(page.locator("#signoff-button")).to_be_enabled()
        expect(page.locator("#differential-body .flags .withheld")).to_have_count(0)
        page.locator(f'#gallery [data-cell="{first}"]').click()
        expect(page.locator("#detail-body .history")).to_contain_text("Confirmed ")


def test_the_fallbacks_calls_are_marked_in_chromium(
    make_server: Callable[..., str], predictor: Any, tmp_path: Path
) -> None:
    """With a fallback model, the page names it, and a cell whose call it made says so in the
    results table and beside the cell."""
    from playwright.sync_api import expect

    from tests.service.conftest import ReferringFlagged

    url = make_server(ReferringFlagged(predictor))
    with chromium_page(url) as page:
        expect(page.locator("#model-info")).to_contain_text("unsure of are called by slow-model")
        create_sample(page, "Backed")
        page.set_input_files("#file-input", cell_files(tmp_path, N_CELLS))
        expect(page.locator("#upload-status")).to_contain_text(f"{N_CELLS} image(s) classified.")
        flagged = page.locator('[data-group="unidentified"] button.cell')
        expect(page.locator("#results-body")).to_contain_text("uncertain (fallback's call)")
        flagged.first.click()
        expect(page.locator("#detail-body")).to_contain_text("the call is its fallback model's")
        expect(page.locator("#detail-body")).to_contain_text("fallback model: ")
