"""The receiver benchmark's baseline: a bare FastAPI endpoint that only reads the body, served exactly as
``neoleads webhooks serve`` serves the receiver (one uvicorn process, same loop and HTTP implementation).

Run by ``receiver_throughput.py``: ``python benchmarks/_bare_server.py PORT``.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.post("/bare/webhooks/{conn_id}")
async def bare(request: Request, conn_id: str) -> dict[str, str]:
    await request.body()
    return {"status": "ok"}


@app.get("/bare/_health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False, log_level="info")
