"""Render a notebook (by default 07_explorer) in a real JupyterLab in headless Chromium and screenshot it.

Two modes. ``--as-saved PATH`` opens an executed notebook exactly as `c2f run` saved it (e.g.
outputs/<run>/executed/07_explorer.ipynb), without running anything: what a student sees on opening it. The
notebook is not trusted there, so JupyterLab shows each output's safe fallback (the explorer's picture and its
one-line text, not the live widget); the report lists the images, stderr boxes and widget errors on the page.

The default mode copies the notebook into a scratch folder with its `run_dir` parameter set to an existing run
directory, starts JupyterLab from this venv, opens the notebook in headless Chromium, runs all cells, waits
for the kernel to go idle, screenshots the page, then (for the explorer) types another query into the
query box, presses Search and screenshots again. It prints whether any widget failed to render
("Error displaying widget", "Loading widget...") and the browser console errors.

Run (after `c2f run --config configs/tiny.yaml --run-dir /tmp/render_run`):

    .venv/bin/python tools/render_in_lab.py --run-dir /tmp/render_run --out /tmp/render_out
    .venv/bin/python tools/render_in_lab.py --as-saved /tmp/render_run/executed/07_explorer.ipynb --out /tmp/render_out

Needs chromium + chromedriver (Debian: `apt-get install -y chromium chromium-driver`) and selenium; none of them
is a project dependency (selenium can live outside the venv: `pip install --target /tmp/selenium selenium`, then
`PYTHONPATH=/tmp/selenium`). A manual check tool: no test imports it; tests/test_pipeline.py checks the executed
notebooks' outputs without a browser.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

REPO = Path(__file__).resolve().parents[1]
BROKEN = ("Error displaying widget", "Loading widget...", "Failed to load model class")


def prepare(notebook: Path, run_dir: Path, nb_dir: Path) -> Path:
    """Copy the notebook with `run_dir = "<absolute run_dir>"` in its parameters cell."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = "\n".join(f'run_dir = "{run_dir.resolve()}"' if line.startswith("run_dir =") else line
                            for line in cell.source.splitlines())
    nb_dir.mkdir(parents=True, exist_ok=True)
    target = nb_dir / notebook.name
    nbformat.write(nb, target)
    return target


def start_lab(nb_dir: Path, port: int, token: str) -> subprocess.Popen:
    # expose_app_in_browser gives window.jupyterapp, so commands run without clicking through menus.
    cmd = [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={nb_dir}", "--allow-root",
           "--LabApp.expose_app_in_browser=True"]
    log = open(nb_dir / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not start; see {nb_dir / 'lab.log'}")


def browser(width: int, height: int, chromedriver: str) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=chromedriver))


def wait_for(driver, script: str, timeout: float, what: str):
    """Poll a JS expression until it is truthy; return its value."""
    end = time.time() + timeout
    while time.time() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


KERNEL_IDLE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
return k && k.status === 'idle'
       && [...document.querySelectorAll('.jp-InputPrompt')].every(p => !p.textContent.includes('*'));
"""


def page_report(driver) -> dict:
    text = driver.find_element(By.TAG_NAME, "body").text
    return {"broken_widgets": [b for b in BROKEN if b in text],
            "errors_in_outputs": [e.text[:300] for e in driver.find_elements(
                By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")],
            "widget_views": len(driver.find_elements(By.CSS_SELECTOR, ".jupyter-widgets")),
            "images": len(driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")),
            "status": [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".widget-html-content")]}


def shoot(driver, out: Path, name: str, css: str | None = None) -> Path:
    """Screenshot the window after scrolling `css` (the first match) to the top of the notebook view."""
    if css:
        driver.execute_script("document.querySelector(arguments[0])?.scrollIntoView(true);", css)
        time.sleep(1)
    path = out / f"07_lab_{name}.png"
    driver.save_screenshot(str(path))
    print("screenshot", path)
    return path


def show_as_saved(args) -> int:
    """Open a copy of an executed notebook without running it; screenshot its top and each picture."""
    args.nb_dir.mkdir(parents=True, exist_ok=True)
    nb = args.nb_dir / args.as_saved.name
    shutil.copy(args.as_saved, nb)
    lab = start_lab(args.nb_dir, args.port, args.token)
    driver = browser(*map(int, args.size.split(",")), args.chromedriver)
    try:
        driver.get(f"http://127.0.0.1:{args.port}/lab/tree/{nb.name}?token={args.token}")
        wait_for(driver, "return document.querySelectorAll('.jp-Cell').length > 0", 120, "the notebook")
        time.sleep(5)  # outputs and images render
        driver.execute_script("window.jupyterapp && window.jupyterapp.shell.collapseLeft();")
        shoot(driver, args.out, f"{nb.stem}_saved_top")
        report = page_report(driver)
        images = driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        for i, image in enumerate(images[:6]):
            driver.execute_script("arguments[0].scrollIntoView(true);", image)
            time.sleep(1)
            shoot(driver, args.out, f"{nb.stem}_saved_image{i}")
        report["console"] = [e["message"][:300] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        print(json.dumps(report, indent=1))
        (args.out / f"{nb.stem}_saved_report.json").write_text(json.dumps(report, indent=1))
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(timeout=30)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", type=Path, default=REPO / "notebooks" / "07_explorer.ipynb")
    ap.add_argument("--run-dir", type=Path, help="run folder the notebook's run_dir parameter is set to")
    ap.add_argument("--as-saved", type=Path, help="an executed notebook to open as it is, without running it")
    ap.add_argument("--nb-dir", type=Path, default=Path("/tmp/render_nb"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/render_out"))
    ap.add_argument("--port", type=int, default=8899)
    ap.add_argument("--token", default="c2f")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    ap.add_argument("--size", default="1600,2400", help="window width,height")
    ap.add_argument("--timeout", type=float, default=300, help="seconds to wait for the run")
    args = ap.parse_args()
    if (args.run_dir is None) == (args.as_saved is None):
        ap.error("give --run-dir (run the notebook in the lab) or --as-saved (open an executed notebook)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.as_saved:
        return show_as_saved(args)
    nb = prepare(args.notebook, args.run_dir, args.nb_dir)
    lab = start_lab(args.nb_dir, args.port, args.token)
    driver = browser(*map(int, args.size.split(",")), args.chromedriver)
    try:
        driver.get(f"http://127.0.0.1:{args.port}/lab/tree/{nb.name}?token={args.token}")
        wait_for(driver, KERNEL_IDLE, 120, "the notebook and its kernel")
        # More room for the notebook; the news toast would cover the bottom right.
        driver.execute_script("window.jupyterapp.shell.collapseLeft();"
                              "[...document.querySelectorAll('.jp-toast-button')]"
                              ".filter(b => b.textContent.trim() === 'No').forEach(b => b.click());")
        shoot(driver, args.out, "0_opened")
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        time.sleep(3)
        wait_for(driver, KERNEL_IDLE, args.timeout, "Run All Cells to finish")
        time.sleep(3)  # let widget views and images finish rendering
        report = {"after_run_all": page_report(driver)}
        shoot(driver, args.out, "1_top")
        shoot(driver, args.out, "2_widget", ".jp-OutputArea-output .jupyter-widgets")
        shoot(driver, args.out, "3_headless_search", ".jp-Notebook .jp-Cell:last-child")

        # One interaction: another suggested query (the Combobox's datalist), then the Search button.
        box = driver.find_elements(By.CSS_SELECTOR, ".widget-combobox input, .jupyter-widgets input[type='text']")
        if box:
            options = driver.execute_script(
                "return [...document.querySelectorAll('datalist option')].map(o => o.value);")
            before = report["after_run_all"]["status"]
            query = next((o for o in options[1:] if all(o not in s for s in before)), "the red circle jumps")
            box[0].click()
            box[0].send_keys(Keys.CONTROL, "a")
            box[0].send_keys(query, Keys.ENTER)
            driver.find_element(By.XPATH, "//button[normalize-space()='Search']").click()
            time.sleep(3)
            wait_for(driver, KERNEL_IDLE, 60, "the search callback")
            time.sleep(2)
            report["typed_query"] = query
            report["after_search"] = page_report(driver)
            shoot(driver, args.out, "4_after_search", ".jp-OutputArea-output .jupyter-widgets")
        else:
            report["typed_query"] = None
        report["console"] = [e["message"][:300] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        print(json.dumps(report, indent=1))
        (args.out / "07_lab_report.json").write_text(json.dumps(report, indent=1))
    finally:
        driver.quit()
        lab.terminate()
        lab.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
