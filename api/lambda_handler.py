"""AWS Lambda entry point: the same app behind Mangum.

`lifespan="off"`: Mangum would otherwise run the ASGI lifespan on every
invocation; Conveyor needs none (everything is created lazily, once per
process), which also keeps cold starts short.

The cyclic garbage collector is paused while the app is imported and built:
that creates tens of thousands of long-lived objects (routes, models, their
signatures) and nothing to collect, yet triggered dozens of collections that
scanned them, about a tenth of a cold start. Afterwards they are frozen
(`gc.freeze`) so later collections skip them too, and collection resumes.
"""

import gc

gc.disable()
try:
    from mangum import Mangum

    from api.app import create_app

    app = create_app()
    handler = Mangum(app, lifespan="off")
finally:
    gc.freeze()
    gc.enable()
