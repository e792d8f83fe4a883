#!/usr/bin/env bash
# SAQ's own Redis tests (its queue, job and worker tests), from the source distribution of the
# pinned saq release, run unmodified on our queue class: tests/saq_upstream/saq_suite.py
# provides the `tests.helpers` SAQ's files import, building BioagentsQueue where SAQ builds
# RedisQueue, on a redis-server of its own. Called by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
version=$(.venv/bin/python -c 'import saq; print(saq.__version__)')
src=".cache/saq-$version"
if [ ! -f "$src/tests/test_queue.py" ]; then
  mkdir -p .cache
  .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
    "saq==$version" -d .cache
  tar -xzf ".cache/saq-$version.tar.gz" -C .cache
fi
cd "$src"
PYTHONPATH="$repo/tests/saq_upstream" exec "$repo/.venv/bin/python" -m pytest -q \
  -p no:cacheprovider -p saq_suite tests/test_queue.py tests/test_job.py tests/test_worker.py
