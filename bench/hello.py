"""The anchor of the GET benchmark: a bare FastAPI hello-world, served the same way as Conveyor.

uvicorn bench.hello:app
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def root() -> dict[str, str]:
    return {"message": "Hello World"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
