"""The demo in a real headless Chromium: send a chat message, see text, an image and an audio player appear.

Needs Debian's ``chromium`` (apt) and the ``playwright`` Python package (no ``playwright install``). The screenshot
goes to the test's temporary directory; with ``ANYGEN_UPDATE_SCREENSHOT=1`` it also replaces ``docs/demo.png``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from test_demo import interleaving_model_dir, load_pipe, serve  # noqa: E402

from anygen.tokenizers.text import TextTokenizer  # noqa: E402

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo.png"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, text_tokenizer: TextTokenizer) -> Iterator[sync_api.Page]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    model_dir = interleaving_model_dir(tmp_path_factory, text_tokenizer)
    with serve(load_pipe(model_dir), tmp_path_factory.mktemp("gradio")) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 960, "height": 900})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(url)
        yield tab
        browser.close()


def save_screenshot(page: sync_api.Page, path: Path) -> None:
    """A small PNG (palette colours) of the page."""
    page.screenshot(path=str(path))
    image = Image.open(path).convert("RGB")
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_a_chat_message_streams_text_an_image_and_audio(page: sync_api.Page, tmp_path: Path) -> None:
    page.get_by_text("Advanced settings").first.click()
    tokens = page.get_by_label("number input for max new tokens")
    tokens.fill("64")
    tokens.press("Enter")
    page.get_by_text("Advanced settings").first.click()

    page.locator("#chat-input textarea").fill("a red circle")
    page.locator("#chat-input textarea").press("Enter")

    page.locator("#chat .bot-row img").first.wait_for(state="visible")
    page.locator("#chat .bot-row audio").first.wait_for(state="attached")  # gradio hides <audio> behind a widget
    page.wait_for_function("() => document.querySelector('#chat .wrap.default')?.classList.contains('hide')")
    assert page.locator("#chat .user-row").first.inner_text().strip() == "a red circle"
    assert page.locator("#chat .bot-row .md").first.inner_text().strip()
    assert page.locator("#chat .bot-row img").first.evaluate("img => img.complete && img.naturalWidth") == 160

    page.locator("#chat .bubble-wrap").evaluate("chat => chat.scrollTo(0, 0)")  # show the question too
    save_screenshot(page, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size < 150_000
    if os.environ.get("ANYGEN_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "demo.png", SCREENSHOT)
