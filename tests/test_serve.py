"""The server over real HTTP: `python -m medhash_jax.serve` in a subprocess on
127.0.0.1 (ephemeral port), driven with httpx and raw sockets.

Every test names the one-line bug it catches. The run is the session's tiny
COVID-19 Radiography run (conftest `serve_run`).
"""

import base64
import concurrent.futures
import io
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("pydicom")

from PIL import Image  # noqa: E402

from medhash_jax.systems import added_cases  # noqa: E402
from tests import dicom_files  # noqa: E402
from tests import serve_harness  # noqa: E402

TOKEN = "test-token-5f1c"
HIT_KEYS = {"rank", "id", "distance", "tie_group", "name", "labels"}


@pytest.fixture(scope="module")
def server(serve_run, tmp_path_factory):
  run = str(tmp_path_factory.mktemp("served") / "run")
  shutil.copytree(serve_run, run)   # adds must not leak into other modules
  with serve_harness.Server(run, token=TOKEN,
                            log_dir=str(tmp_path_factory.mktemp("logs"))) as s:
    yield s


@pytest.fixture(scope="module")
def client(server):
  with httpx.Client(base_url=server.url, timeout=60) as c:
    yield c


@pytest.fixture(scope="module")
def xray(data_dir):
  return dicom_files.read_png(dicom_files.staged_xray(data_dir, "COVID", 1))


def png_bytes(img: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(img).save(out, format="PNG")
  return out.getvalue()


def jpeg_bytes(img: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(img).save(out, format="JPEG", quality=95)
  return out.getvalue()


def search(client, data: bytes, name="query.bin", **fields):
  return client.post("/api/search", files={"file": (name, data)},
                     data={k: str(v) for k, v in fields.items()})


def num_cases(client) -> int:
  return client.get("/api/info").json()["num_cases"]


def raw_http(port: int, request: bytes, *, body_chunks=(), timeout=10.0):
  """Sends bytes on a fresh socket, returns (status, response bytes)."""
  s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
  try:
    s.sendall(request)
    for chunk in body_chunks:
      try:
        s.sendall(chunk)
      except (BrokenPipeError, ConnectionResetError):
        break   # the server answered and closed: what a limit should do
    data = b""
    while b"\r\n\r\n" not in data:
      part = s.recv(65536)
      if not part:
        break
      data += part
    try:
      while True:
        part = s.recv(65536)
        if not part:
          break
        data += part
        if b"}" in part:
          break
    except (socket.timeout, ConnectionResetError):
      pass
  finally:
    s.close()
  status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
  return status, data


# -- read endpoints ----------------------------------------------------------------


def test_healthz_and_info(client):
  """Catches: /api/info without the case count or version; healthz before
  warm-up returning 200 (it returns 503 until ready)."""
  assert client.get("/healthz").json() == {"status": "ok"}
  info = client.get("/api/info").json()
  assert info["method"] == "dpsh" and info["num_bits"] == 16
  assert info["num_cases"] >= 72 and info["version"] == 1
  assert info["class_names"] == ["COVID", "Normal"]
  assert "path" not in info        # the server's file system stays private


def test_search_png_default_k(client, xray):
  """Catches: the k default not 10; hits missing the agreed keys; ranks not
  sorted by Hamming distance; the file name trusted over the bytes."""
  r = search(client, png_bytes(xray), name="scan.dcm")  # name lies
  assert r.status_code == 200, r.text
  body = r.json()
  hits = body["hits"]
  assert len(hits) == 10 and body["k"] == 10
  assert body["query"]["type"] == "png"
  for rank, h in enumerate(hits, 1):
    assert HIT_KEYS <= set(h) and h["rank"] == rank
    assert set(h["labels"]) <= {"COVID", "Normal"} and h["labels"]
    assert h["tie_group"] >= 1
  d = [h["distance"] for h in hits]
  assert d == sorted(d)
  assert len({h["id"] for h in hits}) == 10
  t = body["timing_ms"]
  assert {"decode", "encode", "search", "total"} <= set(t)
  assert "search;dur=" in r.headers["server-timing"]


def test_search_jpeg_and_k(client, xray):
  """Catches: JPEG not sniffed (PNG-only decoder); `k` form field ignored."""
  r = search(client, jpeg_bytes(xray), name="x.png", k=3)
  assert r.status_code == 200, r.text
  assert r.json()["query"]["type"] == "jpeg" and len(r.json()["hits"]) == 3


def test_search_dicom_monochrome1_equals_png(client, xray):
  """A MONOCHROME1 12-bit DX file of the inverted image finds exactly what
  the PNG finds. Catches: MONOCHROME1 not inverted (codes of the negative)."""
  x = xray.astype(np.float64)
  shown = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
  stored = (255 - shown.astype(np.uint16)) * 16       # 0..4080, 12 bits
  dcm = dicom_files.dicom_bytes(stored, photometric="MONOCHROME1",
                                bits_stored=12, modality="DX")
  a = search(client, png_bytes(shown), k=10).json()["hits"]
  r = search(client, dcm, name="image.png", k=10)
  assert r.status_code == 200, r.text
  assert r.json()["query"]["type"] == "dicom"
  assert [(h["id"], h["distance"]) for h in r.json()["hits"]] == \
      [(h["id"], h["distance"]) for h in a]


def _bad_inputs(xray):
  png = png_bytes(xray)
  jpg = jpeg_bytes(xray)
  dcm = dicom_files.dicom_bytes(xray.astype(np.uint16) * 16, bits_stored=12)
  jpegls = dicom_files.dicom_bytes(
      xray, transfer_syntax="1.2.840.10008.1.2.4.80",
      pixel_bytes=b"\xff\xd8" + b"\0" * 64)
  return {
      "gif": (b"GIF89a" + b"\0" * 300, 415, "not PNG, JPEG or DICOM"),
      "text": (b"hello, this is not an image" * 10, 415, "not PNG"),
      "empty": (b"", 400, "empty"),
      "truncated_png": (png[:len(png) // 2], 422, "cannot decode the PNG"),
      "truncated_jpeg": (jpg[:len(jpg) // 2], 422, "cannot decode the JPEG"),
      "truncated_dicom": (dcm[:len(dcm) // 2], 422, "DICOM"),
      "dicom_jpegls": (jpegls, 422, "JPEG-LS"),
  }


@pytest.mark.parametrize("case", ["gif", "text", "empty", "truncated_png",
                                  "truncated_jpeg", "truncated_dicom",
                                  "dicom_jpegls"])
def test_bad_images(client, xray, case):
  """Catches: a 500 (or a 200 on a half-decoded image) for bad bytes; a
  compressed DICOM whose error does not name the syntax."""
  data, status, words = _bad_inputs(xray)[case]
  r = search(client, data, name="query.png")
  assert r.status_code == status, r.text
  assert words in r.json()["error"] and r.json()["status"] == status


def test_bad_requests(client, xray):
  """Catches: k outside 1..N accepted (or a 500); a missing `file` field or
  a non-multipart body crashing the handler."""
  n = num_cases(client)
  png = png_bytes(xray)
  for k in (0, -1, n + 1, "abc", "2.5"):
    r = search(client, png, k=k)
    assert r.status_code == 422, (k, r.text)
    assert "k=" in r.json()["error"]
  assert search(client, png, k=n).status_code == 200
  r = client.post("/api/search", data={"k": "3"},
                  files={"other": ("a.png", png)})
  assert r.status_code == 400 and "file" in r.json()["error"]
  r = client.post("/api/search", json={"file": "x"})
  assert r.status_code == 415 and "multipart" in r.json()["error"]
  assert client.get("/api/search").status_code == 405


def test_413_from_content_length_without_the_body(server):
  """Headers announce 25 MB and no body byte follows: the answer must come
  at once. Catches: the size check after reading the whole body (the
  server would wait for 25 MB that never come, and this times out)."""
  t = time.time()
  status, data = raw_http(server.port, (
      b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      b"Content-Type: multipart/form-data; boundary=xx\r\n"
      b"Content-Length: 26214400\r\n\r\n"), timeout=5)
  assert status == 413, data[:300]
  assert b"upload limit" in data and time.time() - t < 5


def test_413_chunked_upload(server):
  """A chunked 21 MB body (no Content-Length). Catches: the limit checked
  only on Content-Length."""
  boundary = b"b0undary"
  head = (b"--" + boundary + b"\r\nContent-Disposition: form-data; "
          b"name=\"file\"; filename=\"big.png\"\r\n\r\n")
  chunk = b"\0" * (1 << 20)

  def chunks():
    yield b"%x\r\n%s\r\n" % (len(head), head)
    for _ in range(21):
      yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
    yield b"0\r\n\r\n"

  status, data = raw_http(server.port, (
      b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      b"Content-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
      b"Transfer-Encoding: chunked\r\n\r\n"), body_chunks=chunks(), timeout=20)
  assert status == 413, data[:300]


def test_413_plain_upload(client):
  """An ordinary 21 MB upload through httpx. Catches: a limit above 20 MB."""
  try:
    r = search(client, b"\x89PNG\r\n\x1a\n" + b"\0" * (21 << 20))
  except httpx.TransportError:
    pytest.fail("the server dropped the connection instead of answering 413")
  assert r.status_code == 413 and "limit" in r.json()["error"]


def test_case_and_thumbnail(client, xray):
  """Catches: case metadata without labels or thumbnail; ids with '/' not
  routed; the thumbnail not a PNG."""
  hit = search(client, png_bytes(xray), k=1).json()["hits"][0]
  assert "/" in hit["id"]
  r = client.get("/api/cases/" + hit["id"])
  assert r.status_code == 200, r.text
  c = r.json()
  assert c["id"] == hit["id"] and c["labels"] == hit["labels"]
  png = base64.b64decode(c["thumbnail"].split(",", 1)[1])
  assert Image.open(io.BytesIO(png)).size[0] <= 96
  t = client.get(hit["thumbnail"])
  assert t.status_code == 200 and t.headers["content-type"] == "image/png"
  assert t.content == png


def test_unknown_ids_and_traversal(client, server):
  """Catches: a 500 for an unknown id; ids or static names resolved as file
  paths (../ escaping to the repository)."""
  r = client.get("/api/cases/no-such-case")
  assert r.status_code == 404 and "no-such-case" in r.json()["error"]
  assert client.get("/api/thumbnails/nope").status_code == 404
  for path in (b"/api/cases/../../setup.py", b"/api/cases/..%2F..%2Fsetup.py",
               b"/api/thumbnails/%2e%2e/%2e%2e/setup.py",
               b"/static/../../setup.py", b"/static/..%2F..%2Fsetup.py",
               b"/static/%2e%2e/app.py"):
    status, data = raw_http(server.port, b"GET " + path +
                            b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 404, (path, data[:200])
    assert b"setuptools" not in data and b"create_app" not in data


def test_add_case_needs_the_token(client, xray):
  """Catches: the token check missing on POST /api/cases (or a wrong token
  accepted)."""
  n = num_cases(client)
  files = {"file": ("a.png", png_bytes(xray))}
  for headers in ({}, {"Authorization": "Bearer wrong"},
                  {"Authorization": "Basic " + TOKEN}):
    r = client.post("/api/cases", files=files, data={"id": "tok-case"},
                    headers=headers)
    assert r.status_code == 401, r.text
  assert num_cases(client) == n
  assert client.get("/api/cases/tok-case").status_code == 404


def test_add_case_is_searchable(client, xray):
  """Catches: an added case not visible to the next search; duplicate ids
  accepted; unknown labels or path-like ids accepted."""
  auth = {"Authorization": "Bearer " + TOKEN}
  n = num_cases(client)
  img = np.ascontiguousarray(xray[::-1])      # a new image: flipped
  files = {"file": ("new.png", png_bytes(img))}
  r = client.post("/api/cases", files=files, headers=auth,
                  data={"id": "site-b/case-0001", "labels": "COVID",
                        "name": "Case 0001"})
  assert r.status_code == 201, r.text
  assert r.json()["num_cases"] == n + 1 == num_cases(client)
  c = client.get("/api/cases/site-b/case-0001").json()
  assert c["labels"] == ["COVID"] and c["name"] == "Case 0001"
  hits = search(client, png_bytes(img), k=n + 1).json()["hits"]
  mine = [h for h in hits if h["id"] == "site-b/case-0001"]
  assert mine and mine[0]["distance"] == 0
  assert mine[0]["rank"] <= mine[0]["tie_group"]
  r = client.post("/api/cases", files=files, headers=auth,
                  data={"id": "site-b/case-0001", "labels": "Normal"})
  assert r.status_code == 409
  r = client.post("/api/cases", files=files, headers=auth,
                  data={"id": "x1", "labels": "Pneumothorax"})
  assert r.status_code == 422 and "Pneumothorax" in r.json()["error"]
  for bad in ("../evil", "/abs", "a/../b", "a\\b", ".hidden", "a" * 300):
    r = client.post("/api/cases", files=files, headers=auth,
                    data={"id": bad, "labels": "COVID"})
    assert r.status_code == 422, (bad, r.text)
  r = client.post("/api/cases", files={"file": ("x.png", b"GIF89a" * 40)},
                  headers=auth, data={"id": "gif-case"})
  assert r.status_code == 415
  assert num_cases(client) == n + 1
  assert not os.path.exists(os.path.join(os.path.dirname(
      serve_harness.ROOT), "evil"))


def test_40_concurrent_searches_during_adds(server, xray, data_dir):
  """40 searches at once while cases are being added: every answer is a
  whole, consistent ranking. Catches: a torn index (a search reading the
  database while an add replaces it: wrong lengths, duplicate or unknown
  ids, 500s)."""
  queries = [png_bytes(dicom_files.read_png(
      dicom_files.staged_xray(data_dir, cls, i)))
             for cls in ("COVID", "Normal") for i in range(200, 205)]
  auth = {"Authorization": "Bearer " + TOKEN}
  with httpx.Client(base_url=server.url, timeout=120) as c:
    n0 = num_cases(c)
    expected = [search(c, q, k=10).json()["hits"] for q in queries]
    stop = threading.Event()
    added = []

    def adder():
      j = 0
      while not stop.is_set() and j < 8:
        r = c.post("/api/cases", headers=auth,
                   files={"file": ("a.png", queries[j % len(queries)])},
                   data={"id": f"conc/{j}", "labels": "Normal"})
        assert r.status_code == 201, r.text
        added.append(r.json()["num_cases"])
        j += 1

    def one(i):
      r = search(c, queries[i % len(queries)], k=10)
      return i, r.status_code, r.json()

    t = threading.Thread(target=adder)
    t.start()
    with concurrent.futures.ThreadPoolExecutor(40) as ex:
      results = list(ex.map(one, range(40)))
    stop.set()
    t.join(120)
    n1 = num_cases(c)
  assert added and added == sorted(added)
  for i, status, body in results:
    assert status == 200, body
    hits = body["hits"]
    assert len(hits) == 10 and [h["rank"] for h in hits] == list(range(1, 11))
    assert len({h["id"] for h in hits}) == 10
    d = [h["distance"] for h in hits]
    assert d == sorted(d)
    assert n0 <= body["num_cases"] <= n1
    # With nothing added in between the answer is the sequential one; an
    # added case can only push others down, never appear out of order.
    old = [h for h in hits if not h["id"].startswith("conc/")]
    exp_ids = [h["id"] for h in expected[i % len(queries)]]
    assert [h["id"] for h in old] == exp_ids[:len(old)]


def test_kill_during_add_leaves_a_whole_index(serve_run, tmp_path, xray):
  """SIGKILL while cases are being added, then a restart: the run opens,
  every acknowledged case is there whole (metadata, thumbnail, searchable)
  and nothing half-written is. Catches: a non-atomic write of the added
  cases (a truncated file after the kill fails the restart); a case
  acknowledged before it was persisted. Also: no token configured -> 403."""
  run = str(tmp_path / "run")
  shutil.copytree(serve_run, run)
  acked = []
  s = serve_harness.Server(run, token=TOKEN, log_dir=str(tmp_path))
  try:
    auth = {"Authorization": "Bearer " + TOKEN}
    imgs = [png_bytes(np.ascontiguousarray(np.roll(xray, 7 * j, axis=1)))
            for j in range(6)]
    stop = threading.Event()

    def adder():
      with httpx.Client(base_url=s.url, timeout=30) as c:
        j = 0
        while not stop.is_set():
          try:
            r = c.post("/api/cases", headers=auth,
                       files={"file": ("a.png", imgs[j % len(imgs)])},
                       data={"id": f"kill/{j}", "labels": "COVID"})
          except httpx.TransportError:
            return
          if r.status_code == 201:
            acked.append(f"kill/{j}")
          j += 1

    t = threading.Thread(target=adder)
    t.start()
    deadline = time.time() + 60
    while len(acked) < 3 and time.time() < deadline:
      time.sleep(0.01)
    s.kill()    # mid-stream: an add is usually in flight
    stop.set()
    t.join(60)
  finally:
    s.stop()
  assert len(acked) >= 3
  # What a kill in the middle of a segment write leaves: a temporary file
  # (never under a segment's name). The restart must ignore it.
  leftover = os.path.join(run, added_cases.FOLDER, "segment-000999.npz.tmp1")
  with open(leftover, "wb") as f:
    f.write(b"PK\x03\x04 half a zip")
  s2 = serve_harness.Server(run, log_dir=str(tmp_path))   # no token
  try:
    with httpx.Client(base_url=s2.url, timeout=30) as c:
      n = num_cases(c)
      present = [f"kill/{j}" for j in range(len(acked) + 5)
                 if c.get(f"/api/cases/kill/{j}").status_code == 200]
      assert set(acked) <= set(present)
      assert n == 72 + len(present)
      # One whole segment per present case, nothing else under their names.
      assert len(added_cases.segment_paths(run)) == len(present)
      assert os.path.exists(leftover)
      for cid in present:
        case = c.get("/api/cases/" + cid).json()
        assert case["labels"] == ["COVID"]
        png = base64.b64decode(case["thumbnail"].split(",", 1)[1])
        Image.open(io.BytesIO(png)).load()
      hits = search(c, imgs[0], k=n).json()["hits"]
      assert set(present) <= {h["id"] for h in hits}
      r = c.post("/api/cases", files={"file": ("a.png", imgs[0])},
                 data={"id": "x"}, headers={"Authorization": "Bearer " + TOKEN})
      assert r.status_code == 403 and "--token" in r.json()["error"]
  finally:
    s2.stop()


def test_serves_an_exported_bundle(serve_run, tmp_path, client, xray):
  """The server on a bundle (`Retriever.export`) answers like the workdir.
  Catches: the server reading workdir-only files (checkpoints, the config
  under checkpoints/) instead of going through systems.open_run."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  bundle = str(tmp_path / "bundle")
  subprocess.run([sys.executable, "-c",
                  "import sys; from medhash_jax import systems; "
                  "systems.open_run(sys.argv[1]).export(sys.argv[2])",
                  serve_run, bundle], cwd=serve_harness.ROOT,
                 env=serve_harness.env(), check=True, capture_output=True,
                 timeout=300)
  q = png_bytes(xray)
  want = [(h["id"], h["distance"]) for h in search(client, q, k=5).json()["hits"]
          if not h["id"].startswith(("site-b/", "conc/"))]
  with serve_harness.Server(bundle, log_dir=str(tmp_path)) as s:
    with httpx.Client(base_url=s.url, timeout=60) as c:
      info = c.get("/api/info").json()
      assert info["kind"] == "bundle" and info["num_cases"] == 72
      got = [(h["id"], h["distance"])
             for h in search(c, q, k=5).json()["hits"]]
  assert got[:len(want)] == want
