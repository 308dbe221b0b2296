# The MLflow tracking server of infra/docker-compose.yml: PostgreSQL backend store (psycopg2), an
# S3-compatible artifact store (boto3) and the basic-auth app (the `auth` extra: Flask-WTF), configured by
# mlflow-auth.ini. The command line lives in the compose file.
FROM python:3.11-slim

# Keep in step with the pins of worker.Dockerfile (tests/infra/test_compose.py checks it).
ARG MLFLOW_VERSION=3.17.2

RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /var/lib/mlflow-auth && chown mlflow:mlflow /var/lib/mlflow-auth
COPY mlflow-auth.ini /etc/mlflow/basic_auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
