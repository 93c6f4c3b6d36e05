# syntax=docker/dockerfile:1
# One image definition, three targets, configured only by environment:
#   docker build --target api    -t conveyor-api .      # the HTTP API (uvicorn)
#   docker build --target worker -t conveyor-worker .   # an RQ worker (+ its recorder)
#   docker build --target lambda -t conveyor-lambda .   # the API for AWS Lambda (Mangum)
ARG PYTHON_VERSION=3.11

# --- build: dependencies in their own cached layer, then the code ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements/runtime.txt ./requirements.txt
# Only the lock file is copied so far: this layer is rebuilt when dependencies change, not code,
# and it installs exactly the versions (and hashes) the suite passed with.
RUN /opt/venv/bin/pip install --require-hashes -r requirements.txt
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY web ./web
COPY worker ./worker
COPY jobs ./jobs
COPY cli ./cli
COPY conveyor_client ./conveyor_client
COPY migrations ./migrations
RUN /opt/venv/bin/pip install --no-deps .

# --- runtime: slim, non-root, the virtualenv only ---------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --home-dir /app --create-home conveyor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONVEYOR_ENVIRONMENT=production
WORKDIR /app
USER conveyor

FROM runtime AS api
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["conveyor", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS worker
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["conveyor", "check"]
CMD ["conveyor", "worker"]

# --- lambda: AWS's Python base image with the Mangum handler --------------------------------------
FROM public.ecr.aws/lambda/python:${PYTHON_VERSION} AS lambda
COPY --from=build /src/requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install --no-cache-dir --require-hashes -r ${LAMBDA_TASK_ROOT}/requirements.txt --target ${LAMBDA_TASK_ROOT}
COPY api ${LAMBDA_TASK_ROOT}/api
COPY web ${LAMBDA_TASK_ROOT}/web
COPY worker ${LAMBDA_TASK_ROOT}/worker
COPY jobs ${LAMBDA_TASK_ROOT}/jobs
COPY cli ${LAMBDA_TASK_ROOT}/cli
COPY migrations ${LAMBDA_TASK_ROOT}/migrations
# Lambda's file system is read-only: without bytecode compiled here, every cold start would
# compile each of Conveyor's modules again (~85 ms). The sources never change in the image,
# so the .pyc files are used without checking them against the sources.
RUN python -m compileall -q --invalidation-mode unchecked-hash \
        ${LAMBDA_TASK_ROOT}/api ${LAMBDA_TASK_ROOT}/web ${LAMBDA_TASK_ROOT}/worker \
        ${LAMBDA_TASK_ROOT}/jobs ${LAMBDA_TASK_ROOT}/cli ${LAMBDA_TASK_ROOT}/migrations
ENV CONVEYOR_ENVIRONMENT=production
# The API function; the reconciler function overrides this with worker.lambda_reconcile.handler.
CMD ["api.lambda_handler.handler"]
