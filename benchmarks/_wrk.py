"""Drive a server with wrk (Debian's ``wrk``), each request a distinct pre-serialised one.

wrk is a C load generator: on a 2-core machine it takes far less CPU per request than any Python client,
so the server under test keeps more of the machine. Signing needs HMAC, which wrk's Lua lacks, so the
requests are built here and wrk's ``request()`` hands them out in order; a run that would need more
requests than were written stops at the last one (``exhausted`` in the figures) rather than repeat one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

# A separator no serialised request contains (bodies are JSON, heads are latin-1 text).
SEPARATOR = b"\x00\x01\x02\x03"

_SCRIPT = r"""
local requests = {}
local position = 0
local exhausted = false

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local data = file:read("*a")
  file:close()
  local separator = "\0\1\2\3"
  local start = 1
  while true do
    local first, last = string.find(data, separator, start, true)
    if not first then break end
    requests[#requests + 1] = string.sub(data, start, first - 1)
    start = last + 1
  end
end

function request()
  position = position + 1
  if position > #requests then
    exhausted = true
    position = #requests
  end
  return requests[position]
end

function done(summary, latency, requests_)
  io.write(string.format("NEOLEADS exhausted=%s\n", tostring(exhausted)))
  for _, p in ipairs({50, 99}) do
    io.write(string.format("NEOLEADS p%d_us=%d\n", p, latency:percentile(p)))
  end
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    url: str, requests: Sequence[bytes], *, seconds: float, connections: int, workdir: Path, name: str
) -> dict[str, Any]:
    """Run ``wrk -t1 -c<connections> -d<seconds>s`` over ``requests``; return rate, latency and statuses.

    :param url: any URL on the server (the requests carry their own paths).
    """
    requests_file = workdir / f"wrk-{name}.requests"
    requests_file.write_bytes(b"".join(request + SEPARATOR for request in requests))
    script = workdir / "wrk-requests.lua"
    script.write_text(_SCRIPT)
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(requests_file),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    requests_file.unlink()
    total = int(_find(r"(\d+) requests in", output))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = int(_find(r"Non-2xx or 3xx responses: (\d+)", output, "0"))
    return {
        "seconds": seconds,
        "requests": total,
        "per_second": float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        "p50_ms": round(int(_find(r"NEOLEADS p50_us=(\d+)", output)) / 1000, 2),
        "p99_ms": round(int(_find(r"NEOLEADS p99_us=(\d+)", output)) / 1000, 2),
        "non_2xx": non_2xx,
        "socket_errors": errors,
        "exhausted": _find(r"NEOLEADS exhausted=(\w+)", output) == "true",
    }


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match.group(1)
    if default is not None:
        return default
    raise RuntimeError(f"wrk's output has no {pattern!r}:\n{text}")
