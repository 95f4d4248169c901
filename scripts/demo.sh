#!/usr/bin/env bash
# The main job: build the sample projects from real bundled data, stream them through a 2-worker
# pipeline, report throughput per stage and write a preview PNG. Extra arguments go to `datamint-pipes demo`.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" "demo,test"
datamint-pipes demo "$@"
