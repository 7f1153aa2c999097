#!/bin/sh
# Runs its arguments, so the container's command can be `v2server ...`, `tritonserver ...` (what KServe's stock
# Triton runtime passes) or any other program in the image. Arguments that start with a flag go to v2server.
# `exec` makes the server PID 1, so SIGTERM reaches it directly and it drains (--exit-timeout-secs).
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- v2server "$@"
fi

exec "$@"
