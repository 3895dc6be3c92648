#!/usr/bin/env bash
# Run the fast tests on the oldest Airflow release pyproject.toml allows, so that the declared floor is true.
#
# pyproject.toml says `apache-airflow>=3.1`: the oldest release is 3.1.0 (AIRFLOW_VERSION overrides it). A
# separate venv (kept between runs, keyed by that version; OLDEST_AIRFLOW_VENV overrides the path) gets that
# release, then the package (editable, from this checkout) with its test extra, and pytest runs here on it.
#
# Left out, and why:
#   - the markers dagrun, deployment, reliability, postgres: real DAG runs, a whole deployment, load and fault
#     tests, and store tests that do not depend on Airflow (all run on the current Airflow by .ci/run);
#   - the tests listed in DESELECT below, each with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
floor=$(sed -n 's/^ *"apache-airflow>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml | head -n 1)
if [ -z "$floor" ]; then
  echo "pyproject.toml declares no apache-airflow>= floor" >&2
  exit 2
fi
case "$floor" in
  *.*.*) oldest=$floor ;;
  *) oldest=$floor.0 ;; # "3.1" admits 3.1.0
esac
version=${AIRFLOW_VERSION:-$oldest}
venv=${OLDEST_AIRFLOW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/neoleads/venv-airflow-$version}

# What the release was built against where today's versions broke it (no constraint files are reachable
# here). structlog 25.5 dropped structlog.dev.Styles, which Airflow 3.1.0's logging imports; cryptography 51
# made MultiFernet refuse new attributes, and 3.1.0's get_fernet() sets one on it (every connection with a
# password then fails to load).
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
cat >"$constraints" <<EOF
apache-airflow==$version
structlog<25.5
cryptography<51
EOF

# Reinstall the dependencies only when the release, the pins or pyproject.toml changed.
stamp="$venv/.neoleads-stamp"
want=$( (echo "$version"; cat "$constraints" pyproject.toml) | sha256sum | cut -d' ' -f1)
started=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  echo "Creating $venv for Airflow $version" >&2
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing apache-airflow==$version and the package with its test extra" >&2
  "$venv/bin/pip" install --quiet -c "$constraints" "apache-airflow==$version" hatchling editables -e '.[test]'
  echo "$want" >"$stamp"
else
  # The venv may have served another checkout: point the editable install at this one.
  "$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .
fi
installed=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("apache-airflow-core"))')
if [ "$installed" != "$version" ]; then
  echo "expected apache-airflow-core $version in $venv, found $installed" >&2
  exit 1
fi
echo "Airflow $installed ready in $(($(date +%s) - started)) s" >&2

DESELECT=(
  # These read Airflow 3.3 internals (plugins_manager._get_plugins / get_fastapi_plugins,
  # api_fastapi.app.RESERVED_URL_PREFIXES). On 3.1 the plugin is covered by
  # test_real_api_server_serves_the_receiver, which runs a real 3.1 `airflow api-server`.
  tests/test_plugin.py::test_airflow_loads_the_plugin_and_its_fastapi_app
  tests/test_plugin.py::test_prefix_is_not_reserved_by_airflow
  tests/test_plugin.py::test_importing_the_plugin_is_cheap_and_touches_no_database
  # Airflow 3.1's BaseHook.aget_connection works only inside a triggerer (it imports SUPERVISOR_COMMS, which
  # only a running triggerer or task defines); these tests run the trigger's API look outside one.
  tests/triggers/test_webhook.py::test_poll_api_fills_a_lost_delivery
  tests/triggers/test_webhook.py::test_poll_api_rides_out_a_transient_api_failure
  tests/triggers/test_webhook.py::test_poll_api_ends_with_an_error_when_the_conversation_is_gone
  tests/triggers/test_webhook.py::test_poll_api_ends_with_an_error_when_the_connection_is_missing
  tests/sensors/test_webhook.py::test_deferrable_with_poll_api_completes_from_the_api
)
IGNORE=(
  # `airflow neoleads ...` comes through provider-info "cli", which Airflow reads from 3.2 on; on 3.1 the
  # same commands run as `neoleads ...`, which the other CLI tests cover.
  tests/cli/test_airflow_cli.py
)
args=()
for path in "${IGNORE[@]}"; do
  args+=(--ignore "$path")
done
for test in "${DESELECT[@]}"; do
  args+=(--deselect "$test")
done
echo "Left out on Airflow $version (reasons in scripts/test-oldest-airflow.sh): ${IGNORE[*]} and ${#DESELECT[@]} tests" >&2

# The shared-stream tests (tests/triggers/test_event_stream.py) skip themselves before 3.3: there the event
# trigger fires from run(), with its cursor in the event store, which tests/triggers/test_events.py covers.
status=0
"$venv/bin/python" -m pytest -p no:cacheprovider \
  -m "not dagrun and not deployment and not reliability and not postgres" \
  --ignore=tests/deployment --ignore=tests/reliability \
  "${args[@]}" "$@" || status=$?
echo "Airflow $version: tests finished in $(($(date +%s) - started)) s" >&2
exit "$status"
