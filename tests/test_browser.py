"""Open every page of the built website in headless Chromium and check what a reader sees.

Serves _build/html (built once by tests/test_book.py's build_book(), the same build as
`make book`) on a local HTTP server and, for each page: no JavaScript console errors, every
image loaded and has an alt text that says something (not empty, not its file name), MathJax output
wherever there is math, the chapter's numbered figures, no
internal link to a missing page or anchor, no horizontal scrolling on a phone-sized screen.
On each chapter, the exercise box (download, Binder, JupyterHub) is on the first screen of a phone.
A screenshot of each page goes to _build/screenshots/, of each chapter's first phone screen to
_build/screenshots/phone/.

Needs Debian's chromium and chromium-driver (`make browser` installs them); skipped otherwise.
Selenium is given the driver and browser paths, so Selenium Manager never downloads anything.
"""

from __future__ import annotations

import base64
import functools
import http.server
import re
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

from test_book import EXERCISE_OF_CHAPTER, ROOT, build_book, expected_launch_urls, toc_files

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "_build" / "screenshots"
PAGES = ["index", *toc_files(), "search", "genindex"]
PHONE_WIDTH = 412
PHONE_HEIGHT = 915
"""A common Android phone's viewport in CSS pixels (Pixel 7, Galaxy S20+)."""

pytestmark = [
    pytest.mark.xdist_group("book"),
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                              "/usr/bin/chromedriver); install with `make browser`"),
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def site():
    """Base URL of _build/html served on 127.0.0.1 (the build must have succeeded)."""
    build = build_book()
    if build.returncode != 0:
        pytest.fail("the book did not build; see test_book.py::test_book_builds_with_warnings_as_errors")
    handler = functools.partial(_QuietHandler, directory=str(build.html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.TemporaryDirectory(prefix="book-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1280,900", f"--user-data-dir={profile.name}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(120)   # MathJax's and the fonts' promises, on a loaded machine
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()
    profile.cleanup()


def _wait(driver, condition, timeout: float = 30.0, message: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def _open(driver, url: str) -> list[dict]:
    """Load url, wait for the page, MathJax and images; return the console log of this load."""
    driver.get_log("browser")  # drop entries of earlier pages
    driver.set_window_size(1280, 900)
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete",
          message=f"{url} did not finish loading")
    has_math = driver.execute_script("return document.querySelectorAll('.math').length > 0")
    if has_math:
        _wait(driver, lambda d: d.execute_script(
            "return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"),
            message=f"MathJax did not start on {url}")
        driver.execute_async_script("const done = arguments[0]; MathJax.startup.promise.then(() => done(true));")
    # Bring every image into view (in case of lazy loading), then wait until all are settled.
    driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    _wait(driver, lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"), message=f"images on {url} never finished")
    return driver.get_log("browser")


def _screenshot(driver, name: str) -> None:
    """Full-page PNG through the DevTools protocol."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 16000), "scale": 1}})
    (SCREENSHOTS / f"{name.replace('/', '__')}.png").write_bytes(base64.b64decode(shot["data"]))


def _local_target(site: str, page_url: str, href: str, html_root: Path) -> tuple[Path, str] | None:
    """The file (and fragment) an internal link points to; None for external links."""
    url, fragment = urldefrag(urljoin(page_url, href))
    if not url.startswith(site):
        return None
    path = unquote(urlparse(url).path).lstrip("/")
    target = html_root / path
    if target.is_dir() or path == "":
        target = target / "index.html"
    return target, fragment


IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")


def alt_text_problem(alt: str | None, src: str) -> str | None:
    """Why an <img>'s alt text says nothing to a screen-reader user, or None if it is fine.

    Empty or missing alt, or an alt that is a file name or path (myst-nb's default for a figure
    made by a code cell is the image's path, ../_images/<hash>.png), is what a screen reader would read.
    """
    text = (alt or "").strip()
    if not text:
        return "no alt text"
    name = unquote(urlparse(src).path).rsplit("/", 1)[-1]
    looks_like_path = "_images/" in text or text.lower().endswith(IMAGE_SUFFIXES) or text == name
    return f"alt text is a file name, not a description: {text!r}" if looks_like_path else None


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r"""\sid=["']([^"']+)["']""", path.read_text(encoding="utf-8", errors="replace")))


# On a phone: display equations wider than the screen that cannot be scrolled, or show no sign that they
# scroll (the scrolling shadow of book.css); figures shrunk below 80% of their size that do not open full size.
CUT_EQUATIONS = """
return Array.from(document.querySelectorAll('div.math, div.math > mjx-container'))
  .filter(m => m.scrollWidth > m.clientWidth + 1)
  .filter(m => { const before = m.scrollLeft; m.scrollLeft = m.scrollWidth; const moved = m.scrollLeft > before;
                 m.scrollLeft = before; return !(moved && getComputedStyle(m).backgroundImage.includes('gradient')); })
  .map(m => m.textContent.trim().slice(0, 60))"""
SHRUNK_FIGURES = """
return Array.from(document.querySelectorAll('figure img, .cell_output img'))
  .filter(i => i.naturalWidth > 0 && i.getBoundingClientRect().width < 0.8 * i.naturalWidth)
  .filter(i => { const a = i.closest('a[href]');
                 return !(a && /[.](png|jpe?g|svg|gif|webp)$/i.test(a.getAttribute('href'))); })
  .map(i => i.getAttribute('src'))"""


def phone_problems(driver) -> list[str]:
    """What a reader cannot reach on a phone-sized window (the window must be that size already)."""
    cut = [f"an equation is cut off on a {PHONE_WIDTH} px screen (it does not scroll, or shows no sign "
           f"that it does): {t!r}" for t in driver.execute_script(CUT_EQUATIONS)]
    return cut + [f"a figure shrinks below 80% on a {PHONE_WIDTH} px screen and does not open full size: {src}"
                  for src in driver.execute_script(SHRUNK_FIGURES)]


def test_phone_checks_can_fail(browser, tmp_path):
    """A wide equation that is clipped and a wide figure without a link are both reported."""
    import struct
    import zlib

    def png(width: int, height: int) -> bytes:
        row = b"\x00" + b"\xff" * width
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b""))

    (tmp_path / "wide.png").write_bytes(png(2000, 10))
    (tmp_path / "page.html").write_text(
        '<html><body style="margin:0"><div class="math" style="overflow:hidden"><span style="display:inline-block;'
        'width:3000px">Attention(Q,K,V) = softmax(QK^T)</span></div><figure><img src="wide.png" '
        'style="max-width:100%"></figure></body></html>')
    browser.set_window_size(PHONE_WIDTH, 900)
    browser.get((tmp_path / "page.html").as_uri())
    _wait(browser, lambda d: d.execute_script("return document.images[0].complete"))
    found = phone_problems(browser)
    browser.set_window_size(1280, 900)
    assert len(found) == 2 and "Attention(Q,K,V)" in found[0] and "wide.png" in found[1], found


@pytest.mark.parametrize("page", PAGES)
def test_page_in_browser(page, site, browser):
    url = urljoin(site, f"{page}.html")
    console = _open(browser, url)
    problems: list[str] = []

    errors = [entry["message"] for entry in console if entry.get("level") == "SEVERE"]
    problems += [f"JavaScript console error: {m}" for m in errors]

    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    problems += [f"image did not load: {src}" for src in broken]

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('alt'), i.getAttribute('src')])")
    bad_alt = [f"image {src}: {why}" for alt, src in images if (why := alt_text_problem(alt, src or ""))]
    if bad_alt:
        problems += bad_alt
        problems.append("(a figure made by a code cell takes its alt text from the cell's metadata: "
                        "mystnb: image: alt: \"one sentence saying what the figure shows\")")

    math_nodes = browser.execute_script("return document.querySelectorAll('.math').length")
    if math_nodes:
        typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
        untypeset = browser.execute_script(
            "return Array.from(document.querySelectorAll('.math')).filter("
            "m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 60))")
        tex_errors = browser.execute_script(
            "return Array.from(document.querySelectorAll('mjx-merror')).map(e => e.getAttribute('data-mjx-error') || e.textContent)")
        if not typeset:
            problems.append(f"{math_nodes} math elements but no MathJax output (mjx-container)")
        problems += [f"math not typeset: {t!r}" for t in untypeset]
        problems += [f"MathJax error: {t}" for t in tex_errors]

    if page in EXERCISE_OF_CHAPTER:
        figures = browser.execute_script(
            "return Array.from(document.querySelectorAll('figure')).filter("
            "f => f.querySelector('img') && f.querySelector('.caption-number')).length")
        if figures < 2:
            problems.append(f"a chapter needs at least 2 numbered figures with images; found {figures}")
        if not browser.execute_script("return document.querySelectorAll('a.download').length"):
            problems.append("no download link (the exercise notebook)")

    html_root = ROOT / "_build" / "html"
    here = browser.current_url  # index.html redirects to the root page
    hrefs = browser.execute_script(
        "return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
    for href in sorted(set(hrefs)):
        if href.startswith(("mailto:", "javascript:")):
            continue
        target = _local_target(site, here, href, html_root)
        if target is None:
            continue
        path, fragment = target
        if not path.is_file():
            problems.append(f"link to a missing page: {href}")
        elif fragment and path.suffix == ".html" and fragment not in _ids(path):
            problems.append(f"link to a missing anchor: {href}")

    browser.set_window_size(PHONE_WIDTH, 900)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    if overflow > 1:
        problems.append(f"the page scrolls sideways by {overflow} px on a {PHONE_WIDTH} px wide screen")
    problems += phone_problems(browser)
    browser.set_window_size(1280, 900)

    _screenshot(browser, page)
    assert not problems, f"{page}.html:\n  " + "\n  ".join(problems)


def test_link_checker_detects_missing_pages(tmp_path):
    """The internal-link check itself must be able to fail."""
    (tmp_path / "a.html").write_text('<p id="here">x</p>')
    site = "http://127.0.0.1:1/"
    assert _local_target(site, site + "a.html", "https://example.org/", tmp_path) is None
    path, fragment = _local_target(site, site + "a.html", "b.html#x", tmp_path)
    assert not path.is_file() and fragment == "x"
    path, fragment = _local_target(site, site + "a.html", "a.html#here", tmp_path)
    assert path.is_file() and fragment in _ids(path)


def test_alt_text_check_detects_file_names():
    """The alt-text check itself must be able to fail, on what myst-nb writes by default."""
    src = "../_images/c7523f9648ebc15567a14caddf935c93a3c76d0d7ce318d50af7cb282d2ef780.png"
    assert alt_text_problem(src, src)
    assert alt_text_problem("c7523f.png", src)
    assert alt_text_problem("figure.svg", "../_static/figure.svg")
    assert alt_text_problem("", src) == "no alt text" and alt_text_problem(None, src) == "no alt text"
    assert alt_text_problem("   ", src) == "no alt text"
    assert alt_text_problem("Line chart of the training loss: it falls by two orders of magnitude.", src) is None
    assert alt_text_problem("Binder logo", "../_static/images/logo_binder.svg") is None


@pytest.mark.parametrize("page", list(EXERCISE_OF_CHAPTER))
def test_exercise_box_on_a_phones_first_screen(page, site, browser):
    """A reader on a phone sees the exercise box, links and all, without scrolling, and the page
    does not scroll sideways; its download link serves the notebook, its launch links open the
    notebook from the configured repository."""
    ex = EXERCISE_OF_CHAPTER[page]
    # The viewport of a phone (as DevTools' device mode sets it), not a window with browser chrome.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 1, "mobile": True})
    try:
        browser.get(urljoin(site, f"{page}.html"))
        _wait(browser, lambda d: d.execute_script("return document.readyState") == "complete",
              message=f"{page}.html did not finish loading")
        # Measure the final layout: after the web fonts and MathJax (the learning goals have math).
        browser.execute_async_script("""
            const done = arguments[0];
            const math = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
            Promise.all([document.fonts.ready, math]).then(() => done(true));""")
        browser.execute_script("window.scrollTo(0, 0)")
        view = browser.execute_script(
            "return {width: document.documentElement.clientWidth, height: window.innerHeight,"
            " scrollWidth: document.documentElement.scrollWidth}")
        box = browser.execute_script("""
            const box = document.querySelector('div.exercise-box');
            if (!box) return null;
            const r = box.getBoundingClientRect();
            const links = Array.from(box.querySelectorAll('a')).map(a => {
                const l = a.getBoundingClientRect();
                return {href: a.href, cls: a.className, text: a.textContent.trim(),
                        top: l.top, bottom: l.bottom, left: l.left, right: l.right};
            });
            return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
                    title: box.querySelector('.admonition-title').textContent.trim(), links: links};""")
        SCREENSHOTS.joinpath("phone").mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOTS / "phone" / f"{page.replace('/', '__')}.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    assert view["width"] <= PHONE_WIDTH, f"the window is {view['width']} px wide, not a phone's {PHONE_WIDTH}"
    assert view["scrollWidth"] - view["width"] <= 1, (
        f"{page}.html scrolls sideways by {view['scrollWidth'] - view['width']} px on a phone")
    assert box is not None, f"{page}.html has no exercise box (div.exercise-box)"
    assert box["title"] == f"Exercise {int(ex[:2])}", box["title"]
    assert 0 <= box["top"] and box["bottom"] <= view["height"], (
        f"the exercise box spans {box['top']:.0f}-{box['bottom']:.0f} px, not within the phone's first "
        f"screen (0-{view['height']} px)")
    assert 0 <= box["left"] and box["right"] <= view["width"], f"the exercise box is cut off sideways: {box}"
    for link in box["links"]:
        assert link["bottom"] <= view["height"] and link["right"] <= view["width"], f"link off screen: {link}"

    downloads = [link["href"] for link in box["links"] if "download" in link["cls"].split()]
    assert len(downloads) == 1, f"one download link expected in the box: {box['links']}"
    target = _local_target(site, urljoin(site, f"{page}.html"), downloads[0], ROOT / "_build" / "html")
    assert target is not None and target[0].is_file(), f"the download link {downloads[0]} leads nowhere"
    assert target[0].read_bytes() == (ROOT / "exercises" / ex / f"{ex}.ipynb").read_bytes()
    launch = {link["text"]: link["href"] for link in box["links"] if "exercise-launch" in link["cls"].split()}
    assert launch == expected_launch_urls(ex), launch
