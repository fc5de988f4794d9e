"""The demo page end to end in headless Chromium: it loads the city, asks the cascade and draws the answer.

Needs Debian's `chromium` (`apt-get install chromium`); without it the test skips and says so. With it, the
screenshot is saved as docs/serving-demo.png.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from rankstack.serving.app import create_app
from rankstack.serving.cascade import Cascade
from tests._serving import write_tiny_run

SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "serving-demo.png"
BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)

pytestmark = pytest.mark.skipif(BROWSER is None, reason="headless browser test: `chromium` is not installed "
                                "(apt-get install chromium); the demo page is not checked in a browser here")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_world_dir, tmp_path_factory):
    run = write_tiny_run(tiny_world_dir, tmp_path_factory.mktemp("browser") / "run")
    port = _free_port()
    config = uvicorn.Config(create_app(Cascade.load(run)), host="127.0.0.1", port=port, log_level="warning")
    uvi = uvicorn.Server(config)
    thread = threading.Thread(target=uvi.run, daemon=True)
    thread.start()
    for _ in range(100):
        if uvi.started:
            break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    uvi.should_exit = True
    thread.join(timeout=10)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                           "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=120)


def test_demo_page_asks_the_cascade_and_draws_the_answer(server):
    url = f"{server}/?user=17&hour=19&q=sushi&ask=1"
    dom = _chromium("--dump-dom", url).stdout
    assert 'data-ready="1"' in dom, "the page asked /v1/search and drew the answer"
    assert 'class="hit"' in dom and "relevance" in dom and "ranking" in dom
    SCREENSHOT.parent.mkdir(exist_ok=True)
    _chromium(f"--screenshot={SCREENSHOT}", url)
    assert SCREENSHOT.is_file() and SCREENSHOT.stat().st_size > 10_000
