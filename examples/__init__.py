"""Runnable examples (``uvicorn examples.fastapi_app:app``)."""
