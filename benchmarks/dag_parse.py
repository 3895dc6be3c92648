"""Benchmark 6: what importing the Neoleads operators and sensor adds to a DAG file's parse, vs HttpOperator.

Each measurement is a fresh Python process (``--repeats`` of each, interleaved) that first imports what
every DAG file imports anyway (``from airflow.sdk import DAG, BaseOperator``), then times one of:

* ``neoleads``: ``from neoleads_provider.operators import ...`` (all five operators) and
  ``from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor``;
* ``http`` (baseline): ``from airflow.providers.http.operators.http import HttpOperator``
  (apache-airflow-providers-http; benchmark only, not a dependency of this provider).

It reports the median time of that import on top of the shared one, the modules it loads, and which heavy
libraries come with it.

    python benchmarks/dag_parse.py [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

from _common import PYTHON, base_env, emit, log, median, workdir

IMPORTS = {
    "neoleads": (
        "from neoleads_provider.operators import (NeoleadsBulkMessageOperator, NeoleadsCreateContactOperator, "
        "NeoleadsCreateConversationOperator, NeoleadsSendMessageOperator)\n"
        "from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor\n"
    ),
    "http": "from airflow.providers.http.operators.http import HttpOperator\n",
}
HEAVY = (
    "sqlalchemy",
    "fastapi",
    "starlette",
    "pydantic",
    "requests",
    "tenacity",
    "aiohttp",
    "uvicorn",
    "httpx",
)

PROBE = """
import json, sys, time
started = time.perf_counter()
from airflow.sdk import DAG, BaseOperator
shared = time.perf_counter() - started
before = set(sys.modules)
started = time.perf_counter()
exec(compile(sys.argv[1], "<imports>", "exec"))
seconds = time.perf_counter() - started
new = set(sys.modules) - before
heavy = sorted({name.split(".")[0] for name in new} & set(sys.argv[2].split(",")))
print(json.dumps({"shared": shared, "seconds": seconds, "modules": len(new), "heavy": heavy}))
"""


def probe(env: dict[str, str], imports: str) -> dict[str, Any]:
    result = subprocess.run(
        [PYTHON, "-c", PROBE, imports, ",".join(HEAVY)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in IMPORTS}
    with workdir("neoleads-bench-parse-") as home:
        env = base_env(home)
        probe(env, "pass\n")  # writes airflow.cfg and warms the file cache
        for repeat in range(args.repeats):
            for name, imports in IMPORTS.items():
                samples[name].append(probe(env, imports))
            log(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{n} {s[-1]['seconds'] * 1000:.0f} ms" for n, s in samples.items())
            )
    results = {
        name: {
            "median_ms": round(median([s["seconds"] for s in runs]) * 1000, 1),
            "min_ms": round(min(s["seconds"] for s in runs) * 1000, 1),
            "modules_loaded": runs[-1]["modules"],
            "heavy_libraries_loaded": runs[-1]["heavy"],
            "shared_airflow_sdk_import_median_ms": round(median([s["shared"] for s in runs]) * 1000, 1),
        }
        for name, runs in samples.items()
    }
    emit(
        "dag_parse",
        {
            "repeats": args.repeats,
            "results": results,
            "ratio_neoleads_vs_http": round(
                results["neoleads"]["median_ms"] / results["http"]["median_ms"], 2
            ),
        },
    )


if __name__ == "__main__":
    main()
