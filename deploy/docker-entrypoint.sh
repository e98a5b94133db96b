#!/bin/sh
# The images' entrypoint. Secrets come from mounted files (compose secrets, Kubernetes Secret volumes):
# for each NAME below, NAME_FILE=/path puts the file's content in NAME, so a password is never on a
# command line (readable by every user in /proc/PID/cmdline) nor written in a compose file or manifest.
# NAME_FILE itself is removed: Flower refuses FLOWER_* variables it does not know.
set -eu
for name in SAMPLEFLEET_BROKER_URL SAMPLEFLEET_STATE_URL SAMPLEFLEET_RESULT_URL FLOWER_BASIC_AUTH \
            AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY; do
  eval "path=\${${name}_FILE:-}"
  [ -n "$path" ] || continue
  if [ ! -r "$path" ]; then
    echo "entrypoint: ${name}_FILE=$path is not a readable file" >&2
    exit 2
  fi
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}_FILE"
done
# exec: the command replaces this shell, so SIGTERM reaches the worker itself (it hands its shard back and exits
# within seconds, workers/preemption.py) instead of a shell that would not pass it on.
exec "$@"
