"""The ASGI app (Starlette): JSON API + the static page over one open run.

    GET  /healthz                    200 {"status": "ok"} once warmed up
    GET  /api/info                   model, bits, case count, version, limits
    POST /api/search                 multipart `file` (+ `k`, `explain`)
    GET  /api/cases/{id}             metadata + thumbnail (data URL)
    GET  /api/thumbnails/{id}        the thumbnail, image/png
    POST /api/cases                  multipart `file`, `id`, `labels`[, `name`]
                                     (token: `Authorization: Bearer T`)
    GET  /                           the page (static/index.html)

Every error is JSON `{"error": message, "status": code}`. Request bodies
over the limit are refused with 413 from the Content-Length header before
any byte of the body is read, and, for chunked uploads without a length,
as soon as the running count passes the limit (`BodyLimit`).

Blocking work (decoding, the jitted encoder, the Hamming search) runs in
Starlette's thread pool, so the event loop keeps accepting requests; the
retriever's snapshots make concurrent searches during an add consistent.
"""

import base64
import hmac
import os
import re
import time
import urllib.parse
from typing import Any, Dict, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import medhash_jax
from medhash_jax.serve import decode as decode_lib

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
DEFAULT_MAX_UPLOAD = 20 * 1024 * 1024
# A case id: letters, digits, . _ - and / between segments; no "..", no
# leading "/" (ids are keys, never paths, but they appear in URLs and files
# other tools write, so keep them plain).
_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$")
_MAX_ID = 200
_MAX_NAME = 200


class _TooLarge(Exception):
  pass


class BodyLimit:
  """ASGI middleware: 413 for bodies over `limit` bytes, without reading them.

  A Content-Length over the limit is answered at once (the body is never
  received); otherwise `receive` counts bytes and raises once the count
  passes the limit (chunked uploads), which the app turns into a 413.
  """

  def __init__(self, app, limit: int):
    self.app = app
    self.limit = int(limit)

  async def __call__(self, scope, receive, send):
    if scope["type"] != "http":
      return await self.app(scope, receive, send)
    for name, value in scope.get("headers", ()):
      if name == b"content-length":
        try:
          size = int(value)
        except ValueError:
          size = -1
        if size < 0:
          return await _send_json(send, 400, "invalid Content-Length header")
        if size > self.limit:
          return await _send_json(
              send, 413, f"request body of {size} bytes is over the upload "
              f"limit of {self.limit} bytes", close=True)
    seen = 0

    async def limited():
      nonlocal seen
      message = await receive()
      if message["type"] == "http.request":
        seen += len(message.get("body", b""))
        if seen > self.limit:
          raise _TooLarge(f"request body is over the upload limit of "
                          f"{self.limit} bytes")
      return message

    return await self.app(scope, limited, send)


async def _send_json(send, status: int, message: str, close: bool = False):
  import json  # pylint: disable=g-import-not-at-top
  body = json.dumps({"error": message, "status": status}).encode()
  headers = [(b"content-type", b"application/json"),
             (b"content-length", str(len(body)).encode())]
  if close:
    headers.append((b"connection", b"close"))
  await send({"type": "http.response.start", "status": status,
              "headers": headers})
  await send({"type": "http.response.body", "body": body})


def error(status: int, message: str, **headers) -> JSONResponse:
  return JSONResponse({"error": message, "status": status}, status_code=status,
                      headers=headers or None)


class ApiError(Exception):

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status, self.message = status, message


def thumbnail_url(case_id: str) -> str:
  return "/api/thumbnails/" + urllib.parse.quote(case_id, safe="")


def _public_hit(hit: Dict[str, Any]) -> Dict[str, Any]:
  return {"rank": hit["rank"], "id": hit["id"], "distance": hit["distance"],
          "tie_group": hit["tie_group"], "name": hit["name"],
          "labels": hit["labels"], "thumbnail": thumbnail_url(hit["id"])}


def _ms(t0: float, t1: float) -> float:
  return round((t1 - t0) * 1000.0, 3)


def create_app(retriever, *, token: str = "",
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               default_k: int = 10) -> Starlette:
  """The app over an open run (`systems.open_run`); see the module docstring.

  Args:
    retriever: the open run (encode_images, search, case, thumbnail,
      add_cases, explain, info).
    token: the write token; "" disables the write endpoints (403).
    max_upload_bytes: request body limit (413 above it).
    default_k: hits when the request gives no `k`.
  """
  r = retriever
  state = {"ready": False}

  async def form_of(request: Request):
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
      raise ApiError(415, "send multipart/form-data with the image in the "
                     f"field `file` (got Content-Type {ctype or 'none'!r})")
    try:
      return await request.form(max_files=1, max_fields=16,
                                max_part_size=64 * 1024)
    except _TooLarge:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # python-multipart / Starlette: malformed bodies, too many parts.
      raise ApiError(400, f"malformed multipart body ({e})") from e

  async def file_bytes(form) -> bytes:
    up = form.get("file")
    if up is None or isinstance(up, str):
      raise ApiError(400, "no file: send the image in the multipart field "
                     "`file`")
    try:
      return await up.read()
    finally:
      await up.close()

  def decoded(data: bytes):
    try:
      return decode_lib.decode_upload(data)
    except decode_lib.UploadError as e:
      raise ApiError(e.status, e.message) from e

  def parse_k(form) -> int:
    raw = form.get("k")
    n = int(r.info["num_cases"])
    if raw is None or raw == "":
      return min(default_k, n)
    try:
      k = int(str(raw).strip())
    except ValueError:
      raise ApiError(422, f"k={raw!r} is not an integer (1..{n})") from None
    if not 1 <= k <= n:
      raise ApiError(422, f"k={k} must be between 1 and the number of cases "
                     f"in the database ({n})")
    return k

  def check_token(request: Request):
    if not token:
      raise ApiError(403, "write endpoints are disabled: start the server "
                     "with --token or $MEDHASH_SERVE_TOKEN")
    got = request.headers.get("authorization", "")
    got = got[7:].strip() if got.lower().startswith("bearer ") else ""
    got = got or request.headers.get("x-medhash-token", "")
    if not got or not hmac.compare_digest(got.encode(), token.encode()):
      raise ApiError(401, "missing or wrong token (send `Authorization: "
                     "Bearer <token>`)")

  # -- handlers ----------------------------------------------------------------

  async def healthz(request: Request):
    del request
    if not state["ready"]:
      return error(503, "warming up")
    return JSONResponse({"status": "ok"})

  async def info(request: Request):
    del request
    d = {k: v for k, v in r.info.items() if k != "path"}
    d["package_version"] = medhash_jax.__version__
    d["server"] = {"max_upload_bytes": max_upload_bytes,
                   "default_k": default_k, "write_enabled": bool(token)}
    return JSONResponse(d)

  async def search(request: Request):
    t0 = time.perf_counter()
    form = await form_of(request)
    k = parse_k(form)
    data = await file_bytes(form)
    explain = str(form.get("explain", "")).lower() in ("1", "true", "yes")
    t1 = time.perf_counter()

    def work():
      ta = time.perf_counter()
      img, kind = decoded(data)
      tb = time.perf_counter()
      codes = r.encode_images([img])
      tc = time.perf_counter()
      try:
        hits = r.search(codes, k)[0]
      except ValueError as e:   # k vs a database that changed meanwhile
        raise ApiError(422, str(e)) from e
      td = time.perf_counter()
      cam = r.explain(img) if explain else None
      te = time.perf_counter()
      return img, kind, hits, cam, (ta, tb, tc, td, te)

    img, kind, hits, cam, (ta, tb, tc, td, te) = await run_in_threadpool(work)
    timing = {"read": _ms(t0, t1), "decode": _ms(ta, tb),
              "encode": _ms(tb, tc), "search": _ms(tc, td)}
    if explain:
      timing["explain"] = _ms(td, te)
    timing["total"] = _ms(t0, time.perf_counter())
    body = {"hits": [_public_hit(h) for h in hits], "k": k,
            "num_cases": int(r.info["num_cases"]),
            "query": {"type": kind, "height": int(img.shape[0]),
                      "width": int(img.shape[1]),
                      "channels": int(img.shape[2])},
            "gradcam": ("data:image/png;base64," +
                        base64.b64encode(cam).decode()) if cam else None,
            "timing_ms": timing}
    st = ", ".join(f"{n};dur={v}" for n, v in timing.items())
    return JSONResponse(body, headers={"Server-Timing": st})

  def lookup(case_id: str):
    try:
      return r.case(case_id)
    except KeyError:
      raise ApiError(404, f"no case with id {case_id!r}") from None

  async def get_case(request: Request):
    case_id = request.path_params["case_id"]
    c = lookup(case_id)
    png = r.thumbnail(case_id)
    return JSONResponse({"id": c["id"], "name": c["name"],
                         "labels": c["labels"],
                         "thumbnail_url": thumbnail_url(c["id"]),
                         "thumbnail": "data:image/png;base64," +
                                      base64.b64encode(png).decode()})

  async def get_thumbnail(request: Request):
    case_id = request.path_params["case_id"]
    lookup(case_id)
    return Response(r.thumbnail(case_id), media_type="image/png",
                    headers={"Cache-Control": "max-age=3600"})

  async def add_case(request: Request):
    check_token(request)
    form = await form_of(request)
    case_id = str(form.get("id") or "").strip()
    if not case_id:
      raise ApiError(400, "no id: send the new case's id in the field `id`")
    if len(case_id) > _MAX_ID or not _ID_RE.match(case_id):
      raise ApiError(422, f"invalid case id {case_id!r}: use letters, digits, "
                     "'.', '_', '-' and '/' between segments (no '..', no "
                     f"leading '/' or '.', at most {_MAX_ID} characters)")
    labels = []
    for v in form.getlist("labels"):
      labels += [s.strip() for s in re.split(r"[|,]", str(v)) if s.strip()]
    name = str(form.get("name") or case_id)
    if len(name) > _MAX_NAME or any(ord(ch) < 32 for ch in name):
      raise ApiError(422, f"invalid name (control characters, or over "
                     f"{_MAX_NAME} characters)")
    unknown = [c for c in labels if c not in r.info["class_names"]]
    if unknown:
      raise ApiError(422, f"unknown label(s) {unknown}; the run's classes are "
                     f"{r.info['class_names']}")
    data = await file_bytes(form)

    def work():
      img, _ = decoded(data)
      try:
        return r.add_cases([img], [case_id], [labels], names=[name])
      except ValueError as e:
        if "already" in str(e):
          raise ApiError(409, f"case id {case_id!r} is already in the "
                         "database") from e
        raise ApiError(422, str(e)) from e

    try:
      r.case(case_id)
      raise ApiError(409, f"case id {case_id!r} is already in the database")
    except KeyError:
      pass
    n = await run_in_threadpool(work)
    return JSONResponse({"id": case_id, "name": name, "labels": labels,
                         "num_cases": int(n),
                         "thumbnail_url": thumbnail_url(case_id)},
                        status_code=201)

  async def page(request: Request):
    del request
    return FileResponse(os.path.join(STATIC_DIR, "index.html"),
                        headers={"Cache-Control": "no-cache"})

  # -- errors ------------------------------------------------------------------

  async def on_api_error(request, exc: ApiError):
    del request
    return error(exc.status, exc.message)

  async def on_too_large(request, exc):
    del request
    return error(413, str(exc), Connection="close")

  async def on_http(request, exc: HTTPException):
    del request
    return error(exc.status_code, exc.detail or "error")

  async def on_crash(request, exc):
    del request
    return error(500, f"internal error ({type(exc).__name__})")

  routes = [
      Route("/", page),
      Route("/healthz", healthz),
      Route("/api/info", info),
      Route("/api/search", search, methods=["POST"]),
      Route("/api/cases", add_case, methods=["POST"]),
      Route("/api/cases/{case_id:path}", get_case),
      Route("/api/thumbnails/{case_id:path}", get_thumbnail),
      Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
  ]
  app = Starlette(
      routes=routes,
      middleware=[Middleware(BodyLimit, limit=max_upload_bytes)],
      exception_handlers={ApiError: on_api_error, _TooLarge: on_too_large,
                          HTTPException: on_http, Exception: on_crash})
  app.state.ready = state
  return app


def warm_up(retriever, app: Optional[Starlette] = None):
  """Compiles the encoder (batch 1 and the add path) and the search kernels
  before the first request, then marks the app ready."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  info = retriever.info
  size = int(info["image_size"])
  img = np.full((size * 2, size * 2, 1), 127, np.uint8)
  codes = retriever.encode_images([img])
  n = int(info["num_cases"])
  for k in sorted({1, min(10, n), n if n <= 100 else 100}):
    retriever.search(codes, k)
  if info.get("explain"):
    retriever.explain(img)
  if app is not None:
    app.state.ready["ready"] = True
