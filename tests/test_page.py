"""The web page in a real browser: Debian's chromium driven by selenium and
chromium-driver, against a real server on 127.0.0.1.

Skips (with the reason printed) only where no browser or driver is
installed; CI installs them with apt (`chromium chromium-driver`).
"""

import os
import shutil
import tempfile

import pytest

pytest.importorskip("starlette", reason="the `serve` extra is not installed")
pytest.importorskip("uvicorn", reason="the `serve` extra is not installed")
pytest.importorskip("pydicom", reason="the `serve` extra is not installed")
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium (the `test` extra) missing")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests import dicom_files  # noqa: E402
from tests import serve_harness  # noqa: E402

K = 6


def _browser_paths():
  chrome = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                           "google-chrome") if shutil.which(n)),
                None)
  driver = shutil.which("chromedriver")
  if not driver and os.path.exists("/usr/lib/chromium/chromedriver"):
    driver = "/usr/lib/chromium/chromedriver"
  return chrome, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  chrome, driver = _browser_paths()
  if not chrome or not driver:
    reason = ("no chromium / chromedriver on PATH (apt-get install -y "
              "chromium chromium-driver)")
    print("SKIP:", reason)
    pytest.skip(reason)
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  opts = webdriver.ChromeOptions()
  opts.binary_location = chrome
  profile = tempfile.mkdtemp(prefix="chrome-",
                             dir=str(tmp_path_factory.mktemp("profile")))
  for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--window-size=1280,900"):
    opts.add_argument(a)
  d = webdriver.Chrome(service=Service(driver), options=opts)
  d.set_page_load_timeout(60)
  yield d
  d.quit()


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
  with serve_harness.Server(serve_run,
                            log_dir=str(tmp_path_factory.mktemp("logs"))) as s:
    yield s


def test_page_upload_shows_gallery(browser, server, data_dir, tmp_path):
  """Open the page, upload a staged X-ray, wait for the gallery: k hits,
  each with a label, distance and tie group, thumbnails loaded; a
  screenshot lands in tmp_path. Catches: the page not posting `k`, the
  gallery not rendering labels, thumbnail URLs that do not resolve."""
  xray = dicom_files.staged_xray(data_dir, "COVID", 3)
  browser.get(server.url + "/")
  wait = WebDriverWait(browser, 60)
  wait.until(lambda d: "cases" in d.find_element(By.ID, "model-info").text
             and "loading" not in d.find_element(By.ID, "model-info").text)
  k_input = browser.find_element(By.ID, "k-input")
  k_input.clear()
  k_input.send_keys(str(K))
  browser.find_element(By.ID, "file-input").send_keys(xray)
  wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute(
      "data-state") in ("done", "error"))
  assert browser.find_element(By.ID, "error").is_displayed() is False, \
      browser.find_element(By.ID, "error").text
  hits = browser.find_elements(By.CSS_SELECTOR, "#gallery li.hit")
  assert len(hits) == K
  for h in hits:
    labels = [e.text for e in h.find_elements(By.CSS_SELECTOR, ".label")]
    assert labels and set(labels) <= {"COVID", "Normal"}
    assert "distance" in h.text and "tie group" in h.text
  wait.until(lambda d: d.execute_script(
      "return [...document.querySelectorAll('#gallery img')]"
      ".every(i => i.complete && i.naturalWidth > 0)"))
  assert "Normal" in browser.page_source or "COVID" in browser.page_source
  shot = tmp_path / "page.png"
  assert browser.save_screenshot(str(shot))
  assert shot.stat().st_size > 10_000
  print("screenshot:", shot)
  # A DICOM query (MONOCHROME1, 12-bit, no extension the browser knows).
  img = dicom_files.read_png(xray).astype("uint16")
  dcm = tmp_path / "IM0001.dcm"
  dcm.write_bytes(dicom_files.dicom_bytes((255 - img) * 16, bits_stored=12,
                                          photometric="MONOCHROME1",
                                          modality="DX"))
  browser.execute_script(
      "document.getElementById('gallery').dataset.state = 'pending'")
  browser.find_element(By.ID, "file-input").send_keys(str(dcm))
  wait.until(lambda d: d.find_element(By.ID, "gallery").get_attribute(
      "data-state") in ("done", "error"))
  assert "DICOM" in browser.find_element(By.ID, "status").text
  assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery li.hit")) == K
  browser.save_screenshot(str(tmp_path / "page_dicom.png"))
  # A bad file shows an error, not a stale gallery.
  bad = tmp_path / "notes.png"
  bad.write_bytes(b"GIF89a" + b"\0" * 100)
  browser.find_element(By.ID, "file-input").send_keys(str(bad))
  wait.until(EC.visibility_of_element_located((By.ID, "error")))
  assert "not PNG, JPEG or DICOM" in browser.find_element(By.ID, "error").text
  assert not browser.find_elements(By.CSS_SELECTOR, "#gallery li.hit")
