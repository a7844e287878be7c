"""Run configs: `get_config(arg=None)` per method. What they share is in the
package (medhash_jax/config/base.py), so each file imports only medhash_jax."""
