"""medhash_jax: deep hashing for content-based medical image retrieval in JAX/Flax."""

__version__ = "0.1.0"
