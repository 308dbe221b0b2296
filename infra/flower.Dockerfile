# The Flower SuperLink of federations across machines (docs/federated.md); its ServerApp imports components/.
# Build context: the repository root (see infra/docker-compose.yml); flower.Dockerfile.dockerignore keeps the
# virtual environments and run outputs out of it.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /opt/miniaturize
COPY components/federated/requirements-flower.txt .
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
    && pip install --no-cache-dir -r requirements-flower.txt
COPY components components
ENV PYTHONPATH=/opt/miniaturize FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
