"""Launch helpers (launch/local.py is importable for the tests)."""
