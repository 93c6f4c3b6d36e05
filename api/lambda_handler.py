"""AWS Lambda entry point: the same app behind Mangum.

`lifespan="off"`: Mangum would otherwise run the ASGI lifespan on every
invocation; Conveyor needs none (everything is created lazily, once per
process), which also keeps cold starts short.
"""

from mangum import Mangum

from api.app import create_app

app = create_app()
handler = Mangum(app, lifespan="off")
