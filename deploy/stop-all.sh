#!/usr/bin/env bash
# Stops the services started by deploy/run-all.sh: SIGTERM, then SIGKILL for any still running
# after STOP_TIMEOUT_SECS (default 15). Harmless when nothing runs.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/run-all.sh" --stop
