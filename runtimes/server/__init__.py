"""The OpenAI-compatible speech server (`valle-export serve`): FastAPI routes over `runtimes.engine`.
Needs the `serve` extra (fastapi, uvicorn, python-multipart, prometheus-client, lameenc)."""
