"""`mmindex serve`: a read-only search page and JSON API over one table (FastAPI + uvicorn, optional
extra `mmindex[serve]`)."""
