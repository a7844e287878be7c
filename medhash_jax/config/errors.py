"""The error a config raises when it cannot describe a valid run.

Its own module so that every layer can raise it (validation, the task, the
systems) without importing the others: `train/task.py` and
`train/validation.py` both import it, and neither imports the other.
"""


class ConfigError(ValueError):
  """A config that cannot describe a valid run (the message names the key)."""
