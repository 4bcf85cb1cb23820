"""The app in a real browser (Debian's chromium through Playwright): a bad upload, then a good one,
predict, every tab, and an example image.

Skipped when /usr/bin/chromium is missing, unless MLC_REQUIRE_BROWSER=1 (CI), where it fails.
Screenshots go to $MLC_SCREENSHOTS, else to the test's tmp_path.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from test_app import serve, write_checkpoints, write_photo

# Gradio's own queue statistics trip pandas 3 deprecations on every event; they are not ours.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("MLC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and MLC_REQUIRE_BROWSER=1 (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with serve(checkpoint_dir=write_checkpoints(tmp_path_factory.mktemp("checkpoints"))) as address:
        yield address


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("MLC_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_opens_with_an_example_already_predicted(browser, url, shots):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#predict-status").get_by_text("5 methods on a 560 x 300 image").wait_for()  # no click: cached
    page.locator("#labels-grid table").wait_for()
    assert page.locator("#labels-grid tr").count() == 5
    page.locator("#graph-effect-status").get_by_text("largest effect").wait_for()  # cached with the example
    page.screenshot(path=shots / "opening.png", full_page=True)
    page.close()


def test_upload_predict_and_every_tab(browser, url, shots, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#predict-status").get_by_text("5 methods on a").wait_for()

    notes = tmp_path / "notes.jpg"
    notes.write_text("a text file, not an image\n")
    page.get_by_role("button", name="Remove Image").click()
    page.locator("#image input[type=file]").set_input_files(str(notes))
    page.get_by_role("button", name="Predict", exact=True).click()
    page.get_by_text("The file is not an image").first.wait_for()  # the error, shown to the visitor
    page.screenshot(path=shots / "bad_input.png", full_page=True)
    page.get_by_role("button", name="Remove Image").click()

    page.locator("#image input[type=file]").set_input_files(str(write_photo(tmp_path / "photo.jpg", (480, 360))))
    page.locator("#image img").first.wait_for()
    page.get_by_role("button", name="Predict", exact=True).click()
    page.locator("#predict-status").get_by_text("5 methods on a 480 x 360 image").wait_for()
    page.locator("#predict-chart .mlc-row").first.wait_for()
    page.locator("#predict-table").get_by_text("tvmonitor", exact=True).first.wait_for()
    assert page.locator("#labels-grid th").count() == 5  # one row per method
    top = page.locator("#predict-status strong").first.inner_text()
    page.locator("#graph-effect-table").get_by_text("without graph").first.wait_for()
    page.screenshot(path=shots / "predict.png", full_page=True)

    page.get_by_role("tab", name="Explain").click()
    page.get_by_role("button", name="Explain", exact=True).click()
    page.locator("#explain-status").get_by_text(f"Maps for {top}").wait_for()
    assert _images(page, "#explain-gallery") == 5
    # the whole map, not a square crop: the picture drawn keeps the photo's 4:3 aspect
    ratio = page.evaluate("""() => {
        const img = document.querySelector('#explain-gallery .thumbnail-item img, #explain-gallery button img');
        const box = img.getBoundingClientRect(), style = getComputedStyle(img);
        const scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
        const fit = style.objectFit;
        return {natural: img.naturalWidth / img.naturalHeight, fit: fit,
                shown: fit === 'contain' ? (img.naturalWidth * scale) / (img.naturalHeight * scale) : box.width / box.height};
    }""")
    assert abs(ratio["natural"] - 4 / 3) < 0.02 and abs(ratio["shown"] - 4 / 3) < 0.05, ratio
    from mlc.serving.maps import COLOUR_BAR_TEXT_PX

    shown = page.evaluate("""() => { const img = document.querySelector('#explain-gallery img');
        return img.getBoundingClientRect().width / img.naturalWidth; }""")
    assert COLOUR_BAR_TEXT_PX * shown >= 9, shown  # the colour bar's values readable where they are shown
    page.locator("#explain-status").get_by_text("its own colour scale").wait_for()  # which scaling is on
    page.get_by_label("shared").check()
    page.locator("#explain-status").get_by_text("share one colour scale").wait_for()
    page.get_by_label("grad-cam").check()
    page.locator("#explain-status").get_by_text("Grad-CAM for every method").wait_for()
    page.screenshot(path=shots / "explain.png", full_page=True)

    page.get_by_role("tab", name="Flip").click()
    page.get_by_role("button", name="Compare with the flipped image").click()
    page.locator("#flip-status").get_by_text(f"Flip consistency for {top}").wait_for()
    page.locator("#flip-table").get_by_text("Grad-CAM", exact=True).first.wait_for()
    assert _images(page, "#flip-gallery") == 3
    page.screenshot(path=shots / "flip.png", full_page=True)

    page.get_by_role("tab", name="Analysis").click()
    page.locator("#ap-table").get_by_text("mAP", exact=True).first.wait_for()
    page.locator("#seeing-table").get_by_text("centre map", exact=True).first.wait_for()
    folded = page.evaluate("document.documentElement.scrollHeight")
    assert folded < 4000, folded  # collapsed sections: not the 5,900 px page it was
    assert page.locator("#disagree-gallery").is_hidden()  # no data folder: no empty box on the public page
    for section in ("The label graph", "The classifiers (t-SNE)", "What the label graph adds, per class",
                    "Where the methods disagree"):
        page.get_by_text(section, exact=True).click()
    page.locator("#disagree-table").get_by_text("labels split").first.wait_for()
    for plot in ("#ap-plot", "#heatmap", "#network", "#tsne-plot", "#seeing-plot", "#faithfulness-plot", "#graph-ap-plot"):
        page.locator(f"{plot} img").wait_for(state="attached")
        page.locator(f"{plot} img").scroll_into_view_if_needed()  # lazy images load when seen
        page.locator(f"{plot} img").wait_for()
    page.locator("#graph-status").get_by_text("directed edges").wait_for()
    page.screenshot(path=shots / "analysis.png", full_page=True)

    page.get_by_role("tab", name="Predict").click()
    # the page opened on the living room (560 x 300): pick another example and predict it
    page.locator("#examples button.gallery-item").filter(has=page.locator("img[src*='horses']")).click()
    page.get_by_role("button", name="Predict", exact=True).click()
    page.locator("#predict-status").get_by_text("5 methods on a 1024 x 664 image").wait_for()
    page.close()


def test_phone_layout(browser, url, shots):
    page = browser.new_page(viewport={"width": 400, "height": 860}, is_mobile=True, has_touch=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.locator("#predict-status").get_by_text("5 methods on a").wait_for()
    page.locator("#predict-chart .mlc-row").first.wait_for()
    assert page.locator("#predict-chart .mlc-chart").bounding_box()["width"] >= 300  # the chart uses the width
    assert page.evaluate("document.documentElement.scrollWidth") <= 400 + 1  # nothing wider than the phone
    image, examples = page.locator("#image").bounding_box(), page.locator("#examples").bounding_box()
    assert image["width"] >= 300 and examples["y"] >= image["y"] + image["height"] - 1  # stacked, not squeezed
    page.get_by_role("tab", name="Explain").click()
    page.get_by_role("button", name="Explain", exact=True).click()
    page.locator("#explain-gallery img").first.wait_for()
    boxes = [img.bounding_box() for img in page.locator("#explain-gallery img").all()]
    assert len(boxes) == 5 and all(b["x"] >= 0 and b["x"] + b["width"] <= 400 for b in boxes)  # no map off-screen
    for tab in ("Flip", "Analysis"):  # every tab reachable, none behind a menu
        page.get_by_role("tab", name=tab).click()
    page.locator("#seeing-table").get_by_text("centre map", exact=True).first.wait_for()
    page.locator("#ap-table").get_by_text("mAP", exact=True).first.wait_for()
    page.screenshot(path=shots / "phone_analysis.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 400 + 1  # wide tables scroll in their box
    for table in ("#seeing-table", "#ap-table", "#seeds-table"):
        box = page.locator(table).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 400 + 1, (table, box)
    page.get_by_role("tab", name="Predict").click()
    page.screenshot(path=shots / "phone.png", full_page=True)
    page.close()


def _images(page, gallery: str) -> int:
    """Number of distinct images once the gallery shows any (Gradio fills it in one update)."""
    images = page.locator(f"{gallery} .thumbnail-item img, {gallery} button img")
    images.first.wait_for()
    return len({img.get_attribute("src") for img in images.all()})
