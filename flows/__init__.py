"""Prefect flows: typed parameters, task calls and a run summary artifact for each mmindex job."""
