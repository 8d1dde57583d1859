"""A student's JupyterLab, started by `make lab`, in headless Chromium.

`make lab` runs on a copy of exercises/ (LAB_DIR), a free loopback port and a known token (LAB_ARGS), with a
temporary exchange directory holding a released 03_attention. In the copy, 03_attention's first function is
right and scaled_dot_product_attention fills masked scores with -inf (a catalogued mistake: a fully masked row
becomes NaN). The test runs every cell from the Run menu and checks that the mistake's message (taken from
grader.checks, not written here) is shown under the test cell; that the Nbgrader menu offers the Assignment
List but not Formgrader, Course List or Create Assignment, and the server has no formgrader; that the
notebook's Validate button shows the same message; and that the Assignments panel lists the released
assignment with no error, fetches it into <course>/<assignment>/, refuses to submit that blank copy while
exercises/<assignment>/ has the work (the dialog names it: grader.lab.submit), and submits it into the exchange's
inbound folder once the worked notebook is copied in. Between the two, a cell edited in the browser and not run
again is autosaved within seconds and its test cell, run again, names it (grader.checks.state). Screenshots: _build/screenshots/lab-*.png. The server is stopped (its process group) at the end.

Needs Debian's chromium and chromium-driver (`make browser`) and make; skipped otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "_build" / "screenshots"
ASSIGNMENT = "03_attention"
COURSE = "transformer-course"
TOKEN = "test-lab-token"
MISTAKE = "masked_row_nan"
WRONG_SDPA = '''\
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return weights @ v, weights'''
RIGHT_DPA = '''\
    weights = torch.softmax(x @ x.transpose(-2, -1), dim=-1)  # (..., T, T)
    return weights @ x, weights'''
STUB = re.compile(r"^[ \t]*# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(\)", re.M)

pytestmark = [
    pytest.mark.xdist_group("lab"),
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
                              "/usr/bin/chromedriver); install with `make browser`"),
    pytest.mark.skipif(shutil.which("make") is None, reason="needs make (the test starts `make lab`)"),
]


def _lab_url(log: Path) -> str | None:
    """The address JupyterLab prints once it listens (it picks a free port itself: --port=0)."""
    found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
    return f"http://127.0.0.1:{found[1]}" if found else None


def _squash(text: str) -> str:
    return " ".join(text.split())


def _write_attempt(path: Path) -> None:
    """The student's notebook: dot_product_attention right, scaled_dot_product_attention with the mistake."""
    nb = nbformat.read(path, as_version=4)
    bodies = {"dot_product_attention": RIGHT_DPA, "scaled_dot_product_attention": WRONG_SDPA}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in bodies:
            cell.source, n = STUB.subn(lambda _: bodies[grade_id], cell.source)
            assert n == 1, f"{grade_id}: no stub to replace"
    nbformat.write(nb, path)


@dataclass
class Lab:
    url: str
    exercises: Path   # LAB_DIR, JupyterLab's root
    exchange: Path    # NBGRADER_EXCHANGE


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab started by `make lab` on a copy of exercises/; stopped (its process group) at the end."""
    base = tmp_path_factory.mktemp("lab")
    exercises, exchange, home = base / "exercises", base / "exchange", base / "home"
    shutil.copytree(ROOT / "exercises", exercises)
    _write_attempt(exercises / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    released = exchange / COURSE / "outbound" / ASSIGNMENT
    shutil.copytree(ROOT / "exercises" / ASSIGNMENT, released)   # what `nbgrader release_assignment` leaves
    (exchange / COURSE / "inbound").mkdir()
    (exchange / COURSE / "inbound").chmod(0o733)
    home.mkdir()
    venv_bin = Path(sys.executable).parent
    if not (venv_bin / "jupyter").exists():
        pytest.skip(f"needs JupyterLab in the environment running the tests ({venv_bin}/jupyter)")
    args = ("--no-browser --ip=127.0.0.1 --port=0 --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={TOKEN} --LabApp.expose_app_in_browser=True "
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    env = {k: v for k, v in os.environ.items()   # nothing from the caller's Jupyter, nbgrader or `make test`
           if not k.startswith(("JUPYTER", "NBGRADER_")) and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(HOME=str(home), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(venv_bin), env.get("PATH", "")]))
    log = open(base / "lab.log", "w")
    # -o: never (re)build the environment from here; BIN: the interpreter running the tests.
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "lab", f"BIN={venv_bin}",
         f"LAB_DIR={exercises}", f"NBGRADER_EXCHANGE={exchange}", f"LAB_ARGS={args}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = None
    try:
        deadline = time.monotonic() + 180
        while True:
            url = url or _lab_url(base / "lab.log")
            try:
                if url is not None:
                    with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5) as r:
                        if r.status == 200:
                            break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("`make lab` did not start:\n" + (base / "lab.log").read_text()[-3000:])
            time.sleep(1)
        yield Lab(url, exercises, exchange)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('lab-chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(condition, message)


def _screenshot(driver, name: str) -> None:
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    (SCREENSHOTS / f"lab-{name}.png").write_bytes(base64.b64decode(shot["data"]))


def _click_menu(driver, *labels: str) -> None:
    """Open a menu of the menu bar and click an item: _click_menu(driver, "Run", "Run All Cells")."""
    from selenium.webdriver.common.by import By

    top = _wait(driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                        if e.text == labels[0]), False), 30, f"no {labels[0]!r} menu")
    top.click()
    for label in labels[1:]:
        item = _wait(driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                                             if e.is_displayed() and e.text == label), False),
                     15, f"no {label!r} in the {labels[0]!r} menu")
        item.click()


def _menu_labels(driver, top: str) -> list[str]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _click_menu(driver, top)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-itemLabel"), 15, f"{top} menu empty")
    labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-item")
              if e.is_displayed()]
    _screenshot(driver, top.lower() + "-menu")
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()   # to the open menu, which has the focus
    _wait(driver, lambda d: not [m for m in d.find_elements(By.CSS_SELECTOR, ".lm-Menu") if m.is_displayed()],
          15, f"the {top} menu did not close")
    return labels


def test_a_wrong_solution_is_named_and_only_student_tools_are_there(lab, browser):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from grader.checks import ITEMS

    (mistake,) = [m for m in ITEMS["scaled_dot_product_attention"].mistakes if m.key == MISTAKE]
    browser.get(f"{lab.url}/lab/tree/{ASSIGNMENT}/{ASSIGNMENT}.ipynb?token={TOKEN}")
    _wait(browser, lambda d: d.execute_script(
        "return !!(window.jupyterapp && document.querySelector('.jp-NotebookPanel .jp-Cell'))"),
        120, "JupyterLab did not open the notebook")
    # A cell run before the notebook's kernel exists is silently not run: wait for a connected, idle kernel.
    _wait(browser, lambda d: d.execute_script(
        "const w = window.jupyterapp.shell.currentWidget;"
        "const k = w && w.sessionContext && w.sessionContext.isReady && w.sessionContext.session"
        "          && w.sessionContext.session.kernel;"
        "return !!k && k.connectionStatus === 'connected' && k.status === 'idle'"),
        180, "the notebook's kernel did not start")

    # The student's tools: Validate on the notebook's toolbar, the Assignment List command.
    assert any(b.text.strip() == "Validate" for b in browser.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel-toolbar button, .jp-NotebookPanel-toolbar jp-button")), \
        "no Validate button on the notebook's toolbar"
    commands = browser.execute_script(
        "const c = window.jupyterapp.commands; return Object.fromEntries(arguments[0].map(i => [i, c.hasCommand(i)]));",
        ["nbgrader:open-assignment-list", "nbgrader:open-formgrader", "nbgrader:open-formgrader-local",
         "nbgrader:open-course-list", "nbgrader:open-create-assignment"])
    assert commands == {"nbgrader:open-assignment-list": True, "nbgrader:open-formgrader": False,
                        "nbgrader:open-formgrader-local": False, "nbgrader:open-course-list": False,
                        "nbgrader:open-create-assignment": False}, commands
    assert not browser.find_elements(By.ID, "nbgrader-create_assignemnt"), "the Create Assignment panel is there"
    labels = _menu_labels(browser, "Nbgrader")
    assert "Assignment List" in labels, labels
    assert not [label for label in labels if label.strip() and label != "Assignment List"], labels
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{lab.url}/formgrader?token={TOKEN}", timeout=30)
    assert missing.value.code == 404

    # Run every cell as a student would; the test cell of scaled_dot_product_attention names the mistake.
    _click_menu(browser, "Run", "Run All Cells")
    expected = _squash(mistake.says)

    def shown(d):
        outputs = d.execute_script(
            "return Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output'))"
            ".map(o => o.textContent)")
        return any(expected in _squash(o) for o in outputs)

    try:
        _wait(browser, shown, 240, f"the message of {MISTAKE} never appeared under a test cell")
    finally:
        _screenshot(browser, "notebook")
    browser.execute_script(
        "const o = Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output'))"
        ".find(o => o.textContent.replace(/\\s+/g, ' ').includes(arguments[0]));"
        "if (o) o.scrollIntoView({block: 'center'});", expected)
    _screenshot(browser, "mistake")

    # Validate runs the notebook again, outside this kernel, and lists the failing test cell with the message.
    (validate,) = [b for b in browser.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel-toolbar button, .jp-NotebookPanel-toolbar jp-button")
        if b.text.strip() == "Validate"]
    validate.click()
    dialog = _wait(browser, lambda d: d.execute_script(
        "const b = document.querySelector('.jp-Dialog .jp-Dialog-body'); return b ? b.innerText : ''"),
        240, "Validate showed no result")
    _screenshot(browser, "validate")
    assert expected in _squash(dialog), dialog
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".jp-Dialog"), 15, "the Validate dialog stayed open")

    # A cell edited and not run again: the notebook autosaves within seconds (grader/lab/settings), and the test
    # cell run again names the cell (its In [N]) whose text the kernel's definition no longer matches.
    with urllib.request.urlopen(f"{lab.url}/lab/api/settings/@jupyterlab/docmanager-extension:plugin"
                                f"?token={TOKEN}", timeout=30) as r:
        assert json.load(r)["schema"]["properties"]["autosaveInterval"]["default"] == 5
    edited = RIGHT_DPA.replace("return weights @ x, weights", "return 2 * weights @ x, weights")
    cell_index = ("const nb = window.jupyterapp.shell.currentWidget.content;"
                  "const at = id => nb.widgets.findIndex(c => (c.model.getMetadata('nbgrader') || {}).grade_id === id);")
    browser.execute_script(cell_index + "const c = nb.widgets[at('dot_product_attention')];"
                           "c.model.sharedModel.setSource(c.model.sharedModel.getSource().replace(arguments[0], "
                           "arguments[1]));", RIGHT_DPA, edited)
    saved = lab.exercises / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    _wait(browser, lambda d: any(edited in c.source for c in nbformat.read(saved, as_version=4).cells), 60,
          "the edited cell was not autosaved within a minute")
    browser.execute_script(cell_index + "nb.activeCellIndex = at('test_dot_product_attention');"
                           "return window.jupyterapp.commands.execute('notebook:run-cell');")

    def stale_named(d):
        return d.execute_script(cell_index + "const c = nb.widgets[at('test_dot_product_attention')];"
                                "return c.node.querySelector('.jp-OutputArea') ? "
                                "c.node.querySelector('.jp-OutputArea').textContent : '';")

    _wait(browser, lambda d: "edited since" in _squash(stale_named(d)), 120,
          "the test cell did not say that its definition's cell was edited since it ran")
    output = _squash(stale_named(browser))
    assert re.search(r"The `dot_product_attention` in your kernel is the one In \[\d+\] defined, but that cell "
                     r"has been edited since\. Run it again, then this cell\.", output), output
    _screenshot(browser, "stale")

    # The Assignments panel lists what the instructor released, without an exchange error.
    _click_menu(browser, "Nbgrader", "Assignment List")
    _wait(browser, lambda d: ASSIGNMENT in d.execute_script(
        "const p = document.getElementById('released_assignments_list'); return p ? p.innerText : ''"),
        60, "the Assignments panel does not list the released assignment")
    panel = browser.execute_script("return document.getElementById('nbgrader-assignment-list').innerText")
    _screenshot(browser, "assignments")
    for error in ("Error fetching courses", "exchange directory does not exist", "Error"):
        assert error not in panel, panel[:2000]

    # Fetch, then Submit, from the panel: the copy lands in <course>/<assignment>/ beside exercises/'s own,
    # and the submission in the exchange's inbound folder, named after the login.
    def click(label):
        """Find the panel's button and click it, in one step (the panel re-renders while it loads)."""
        def attempt(d):
            try:
                found = [b for b in d.find_elements(By.CSS_SELECTOR, "#nbgrader-assignment-list button")
                         if b.is_displayed() and b.is_enabled() and b.text.strip() == label]
            except StaleElementReferenceException:
                return False
            if found:
                try:
                    found[0].click()
                except StaleElementReferenceException:   # re-rendered by the click itself: judged below
                    pass
            return bool(found)
        return attempt

    fetched = lab.exercises / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    _wait(browser, click("Fetch"), 30, "no Fetch button")
    _wait(browser, lambda d: fetched.exists(), 60, f"Fetch did not create {fetched}")
    inbound = lab.exchange / COURSE / "inbound"
    # Submit straight after Fetch would hand in the blank copy while the work is in exercises/: refused, named.
    _wait(browser, click("Submit"), 60, "the fetched assignment has no Submit button")
    refusal = _wait(browser, lambda d: d.execute_script(
        "const m = document.getElementById('submission-message'); return m ? m.innerText : ''"),
        90, "Submit of the blank fetched copy showed no refusal")
    _screenshot(browser, "submit-refused")
    assert f"your work is in {ASSIGNMENT}/{ASSIGNMENT}.ipynb" in _squash(refusal), refusal[-2000:]
    assert f"{COURSE}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb is the notebook exactly as released" in _squash(refusal)
    assert not list(inbound.iterdir()), "the blank notebook was submitted"
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, ".jp-Dialog"), 15, "the refusal stayed open")
    shutil.copy(lab.exercises / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", fetched)   # as the refusal says
    _wait(browser, click("Submit"), 60, "no Submit button after the refusal")
    # nbgrader copies the folder file by file: the folder appears before the notebook and timestamp.txt are in it.
    _wait(browser, lambda d: inbound.is_dir() and any((s / "timestamp.txt").exists() for s in inbound.iterdir()),
          90, "no complete submission arrived in the inbound folder")
    (submission,) = inbound.iterdir()
    assert (submission / f"{ASSIGNMENT}.ipynb").exists() and f"+{ASSIGNMENT}+" in submission.name
    handed_in = nbformat.read(submission / f"{ASSIGNMENT}.ipynb", as_version=4)
    assert any(WRONG_SDPA in cell.source for cell in handed_in.cells), "the submission is not the worked notebook"
    _wait(browser, lambda d: ASSIGNMENT in d.execute_script(
        "const s = document.getElementById('submitted_assignments_list'); return s ? s.innerText : ''"),
        60, "the panel does not list the submission")
    _screenshot(browser, "submitted")
