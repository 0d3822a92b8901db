"""Prefect tasks: thin wrappers around mmindex functions that add retries, timeouts and names.

No logic lives here. Stage tasks never cache (their inputs are image batches and open tables), and
only tasks that do I/O retry: a retry of a model forward pass would only fail again.
"""
