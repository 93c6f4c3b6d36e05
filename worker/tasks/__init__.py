"""Your tasks live here. Add a module (or a function to `examples.py`) and import it below.

A task is one typed function registered with `@task`; see `examples.py`.
"""

from worker.tasks import examples

__all__ = ["examples"]
