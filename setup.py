"""medhash_jax: deep hashing for content-based medical image retrieval in JAX/Flax.

The C++ Hamming top-k kernel (an XLA FFI target) is compiled here. When no compiler
is available the package still installs; `medhash_jax.retrieval` then logs a
warning and falls back to the reference path.
"""

import glob
import logging
import os
import sys

import setuptools
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
  """Builds the FFI kernel when possible; never fails the install."""

  def build_extensions(self):
    try:
      import jaxlib  # noqa: F401  (headers ship with jaxlib)
      from jax import ffi  # type: ignore
      include = ffi.include_dir()
    except Exception:  # jax may be absent in the isolated build env
      import jaxlib
      include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    for ext in self.extensions:
      ext.include_dirs.append(include)
    try:
      super().build_extensions()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning(
          "medhash_jax: could not build the C++ Hamming kernel (%s); the "
          "reference backend will be used instead.", e)
      print(f"WARNING: medhash_jax C++ kernel not built: {e}", file=sys.stderr)

  def run(self):
    try:
      super().run()
    except Exception as e:  # pylint: disable=broad-except
      print(f"WARNING: medhash_jax C++ kernel not built: {e}", file=sys.stderr)


# One library from every file in csrc/ (see csrc/hamming.h for the files). No
# -m or -march flags: each ISA's kernels select their target in their own
# file (#pragma GCC target) and the library dispatches on the CPU at run time.
hamming_ext = setuptools.Extension(
    "medhash_jax.retrieval._hamming_cpu",
    sources=sorted(glob.glob("medhash_jax/retrieval/csrc/*.cc")),
    depends=sorted(glob.glob("medhash_jax/retrieval/csrc/*.h")),
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
    extra_link_args=["-lpthread"],
)

setuptools.setup(
    name="medhash_jax",
    version="0.1.0",
    description="Deep hashing for content-based medical image retrieval (JAX/Flax)",
    packages=setuptools.find_packages(include=["medhash_jax", "medhash_jax.*"]),
    package_data={"medhash_jax.retrieval": ["csrc/*.cc", "csrc/*.h"],
                  "medhash_jax.serve": ["static/*.html", "static/*.js",
                                        "static/*.css"]},
    python_requires=">=3.11",
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
    ],
    install_requires=[
        # The range CI exercises (.ci/run): the oldest releases Python 3.11
        # resolves (jax 0.10.2, flax 0.12.8) and the newest on Python 3.12.
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax",
        "orbax-checkpoint",
        "grain",
        "numpy",
        "scikit-image",
        "absl-py",
        "ml-collections",
        # Imported directly (not only through scikit-image): images, masks,
        # PR curves (matplotlib's Agg canvas) and TensorBoard event files
        # without TensorFlow (tensorboardX).
        "Pillow",
        "scipy",
        "matplotlib",
        "tensorboardX",
    ],
    extras_require={
        "test": ["pytest", "chex", "faiss-cpu", "scikit-learn",
                 "safetensors",  # the .safetensors converter test
                 # server tests: real HTTP client and a real browser (the
                 # browser itself: apt-get install chromium chromium-driver)
                 "httpx", "selenium>=4.10"],
        "faiss": ["faiss-cpu"],
        # python -m medhash_jax.serve (and DICOM input anywhere)
        "serve": ["starlette>=0.40", "uvicorn>=0.30", "python-multipart>=0.0.18",
                  "pydicom>=3.0"],
        "dicom": ["pydicom>=3.0"],
    },
    ext_modules=[hamming_ext],
    cmdclass={"build_ext": OptionalBuildExt},
)
