"""Run configs: `get_config(arg=None)` per method; `base.py` holds the shared part."""
