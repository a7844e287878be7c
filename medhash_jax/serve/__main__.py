"""python -m medhash_jax.serve --workdir=RUN_OR_BUNDLE [--host] [--port] [--token]

Loads the run once, jits and warms the encoder and the search, then serves
with uvicorn. Binds 127.0.0.1 unless --host says otherwise. The write token
comes from --token or $MEDHASH_SERVE_TOKEN (no token: writes are refused).
"""

import os

from absl import app as absl_app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "trained run or bundle folder")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "address to bind")
_PORT = flags.DEFINE_integer("port", 8000, "port (0 = any free port)")
_PORT_FILE = flags.DEFINE_string(
    "port_file", "", "write the bound port here once listening (tests, port 0)")
_TOKEN = flags.DEFINE_string(
    "token", None, "write token for POST /api/cases (default "
    "$MEDHASH_SERVE_TOKEN; none: writes disabled)")
_MAX_UPLOAD_MB = flags.DEFINE_float("max_upload_mb", 20.0,
                                    "request body limit in MB (413 above)")
_DEFAULT_K = flags.DEFINE_integer("default_k", 10, "hits when no k is given")
_LOG_LEVEL = flags.DEFINE_string("uvicorn_log_level", "warning",
                                 "uvicorn's log level")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  import socket  # pylint: disable=g-import-not-at-top
  import uvicorn  # pylint: disable=g-import-not-at-top
  from medhash_jax import systems  # pylint: disable=g-import-not-at-top
  from medhash_jax import serve  # pylint: disable=g-import-not-at-top

  token = _TOKEN.value if _TOKEN.value is not None else os.environ.get(
      "MEDHASH_SERVE_TOKEN", "")
  retriever = systems.open_run(_WORKDIR.value)
  app = serve.create_app(retriever, token=token,
                         max_upload_bytes=int(_MAX_UPLOAD_MB.value * 1024 * 1024),
                         default_k=_DEFAULT_K.value)
  serve.warm_up(retriever, app)
  info = retriever.info
  logging.info("serving %s (%s, %d bits, %d cases)%s", _WORKDIR.value,
               info["method"], info["num_bits"], info["num_cases"],
               "" if token else "; no token: POST /api/cases disabled")
  # Bind here so port 0 works and the port is known before uvicorn runs.
  family = socket.AF_INET6 if ":" in _HOST.value else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((_HOST.value, _PORT.value))
  port = sock.getsockname()[1]
  config = uvicorn.Config(app, log_level=_LOG_LEVEL.value, access_log=False,
                          timeout_graceful_shutdown=5)
  server = uvicorn.Server(config)
  if _PORT_FILE.value:
    tmp = _PORT_FILE.value + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(str(port))
    os.replace(tmp, _PORT_FILE.value)
  print(f"medhash_jax.serve: listening on http://{_HOST.value}:{port}",
        flush=True)
  server.run(sockets=[sock])


if __name__ == "__main__":
  absl_app.run(main)
