# The MLflow tracking server of infra/docker-compose.yml: PostgreSQL backend store (psycopg2) and an
# S3-compatible artifact store (boto3). The command line lives in the compose file.
FROM python:3.11-slim

RUN pip install --no-cache-dir "mlflow==3.17.*" "psycopg2-binary>=2.9,<3" "boto3>=1.34,<2" \
    && useradd --create-home --uid 1000 mlflow

USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
