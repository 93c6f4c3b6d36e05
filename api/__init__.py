"""The ASGI app: JSON routes under /api/v1, auth, and the Mangum handler for Lambda."""
