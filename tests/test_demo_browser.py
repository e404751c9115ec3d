"""The demo in a real headless Chromium: send a chat message, see text, an image and an audio player appear; click
a chat example on the shipped model and see its answer.

Needs Debian's ``chromium`` (apt) and the ``playwright`` Python package (no ``playwright install``). Screenshots go
to the tests' temporary directories; with ``ANYGEN_UPDATE_SCREENSHOT=1`` the shipped model's also replaces
``docs/demo.png`` (the README's).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from test_demo import interleaving_model_dir, load_pipe, serve  # noqa: E402

from anygen.pipelines import AnyGenPipeline, load  # noqa: E402
from anygen.apps.showcase import QUESTION  # noqa: E402
from anygen.tokenizers.text import TextTokenizer  # noqa: E402

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "demo.png"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def open_demo(browser: sync_api.Browser, pipe: AnyGenPipeline, temp_dir: Path) -> Iterator[sync_api.Page]:
    with serve(pipe, temp_dir) as url:
        tab = browser.new_page(viewport={"width": 960, "height": 900})
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(url)
        yield tab
        tab.close()


@pytest.fixture(scope="module")
def page(browser: sync_api.Browser, tmp_path_factory: pytest.TempPathFactory,
         text_tokenizer: TextTokenizer) -> Iterator[sync_api.Page]:
    model_dir = interleaving_model_dir(tmp_path_factory, text_tokenizer)
    with open_demo(browser, load_pipe(model_dir), tmp_path_factory.mktemp("gradio")) as tab:
        yield tab


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
    temperature = page.get_by_label("number input for text temperature (0 = greedy)")  # sampled text: this
    temperature.fill("1")  # random model then writes text before its media, as the test needs
    temperature.press("Enter")
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


def test_a_chat_example_on_the_shipped_model_gets_an_answer(browser: sync_api.Browser, tmp_path: Path) -> None:
    """The first chat example (a question about a picture) on anygen-tiny: the answer has text and audio."""
    with open_demo(browser, load(), tmp_path / "gradio") as page:
        page.locator("button.gallery-item").first.click()  # gr.Examples' first sample fills the input box
        page.wait_for_function("q => document.querySelector('#chat-input textarea')?.value === q", arg=QUESTION)
        page.locator("#chat-input textarea").press("Enter")
        page.locator("#chat .bot-row audio").first.wait_for(state="attached")
        page.wait_for_function("() => document.querySelector('#chat .wrap.default')?.classList.contains('hide')")
        assert page.locator("#chat .user-row").first.inner_text().strip().startswith(QUESTION)
        assert page.locator("#chat .user-row img").count() == 1
        assert page.locator("#chat .bot-row .md").first.inner_text().strip()
        page.locator("#chat .bubble-wrap").evaluate("chat => chat.scrollTo(0, 0)")
        save_screenshot(page, tmp_path / "demo.png")
    assert (tmp_path / "demo.png").stat().st_size < 150_000
    if os.environ.get("ANYGEN_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "demo.png", SCREENSHOT)
