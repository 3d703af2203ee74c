"""Runnable end-to-end examples of qsim (each one has a ``run()`` API and a ``python -m`` entry)."""
