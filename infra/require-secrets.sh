#!/bin/sh
# Entrypoint guard of the compose stack's services: start only with real secrets. Each variable named before
# `--` must be set, non-empty and not a sample value of infra/.env.example (those all contain "change-me");
# then the command after `--` replaces this shell.
#
#   sh require-secrets.sh POSTGRES_PASSWORD -- docker-entrypoint.sh postgres
set -eu

while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    name=$1
    shift
    case "$name" in
        "" | [0-9]* | *[!A-Za-z0-9_]*) echo "require-secrets: bad variable name '$name'" >&2; exit 2 ;;
    esac
    eval "value=\${$name-}"
    case "$value" in
        "")
            echo "refusing to start: $name is not set; set it in infra/.env (template: infra/.env.example)" >&2
            exit 1 ;;
        *change-me*)
            echo "refusing to start: $name still holds the sample value of infra/.env.example; put your own" \
                 "secret in infra/.env" >&2
            exit 1 ;;
    esac
done
[ "$#" -gt 0 ] && shift  # the --
if [ "$#" -eq 0 ]; then
    echo "require-secrets: no command after --" >&2
    exit 2
fi
exec "$@"
