-- The two databases of the compose stack, owned by POSTGRES_USER. The postgres image runs this once, on the
-- first start with an empty data volume (docker-entrypoint-initdb.d).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
