"""`uvicorn api.main:app`: the app for servers that import it by name.

Importing it starts an API process, so the open-file limit is raised here too (for servers
started with `uvicorn api.main:app` rather than `conveyor api`): every stream holds a socket.
"""

from api.app import create_app
from jobs.process_limits import raise_fd_limit

raise_fd_limit()
app = create_app()
