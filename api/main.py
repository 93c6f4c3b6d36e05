"""`uvicorn api.main:app`: the app for servers that import it by name."""

from api.app import create_app

app = create_app()
