"""The retrieval server: `python -m medhash_jax.serve --workdir=RUN_OR_BUNDLE`.

An HTTP API and a web page over a trained run or an exported bundle
(`systems.open_run`): search by image (PNG, JPEG, DICOM), case lookup with
thumbnails, adding cases (token), Grad-CAM overlays for ATH. `app.py`
documents the endpoints; README.md ("Serving") the choice of Starlette.
Needs the `serve` extra: pip install -e '.[serve]'.
"""

from medhash_jax.serve.app import create_app, warm_up

__all__ = ["create_app", "warm_up"]
