"""Every import and check that depends on the Airflow version, in one place (as the official providers do).

The package admits Airflow 3.1 and newer. What moved or appeared since 3.1:

- 3.2: the Task SDK exports ``conf``; ``airflow.sdk.exceptions`` has the sensor and lookup exceptions.
- 3.3: triggers can share one poll loop in ack mode (``airflow.triggers.shared_stream``).
- 3.4: ``BaseEventTrigger.__init__`` takes ``queue``.

``SharedStreamProducer`` and ``AdvanceItem`` (not in ``__all__``) are imported on first attribute access
(None before 3.3), so a DAG file that imports only a sensor does not pay for the shared-stream machinery.
"""

from __future__ import annotations

from typing import Any

from airflow import __version__ as _airflow_version
from packaging.version import Version

__all__ = [
    "AIRFLOW_V_3_2_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AIRFLOW_V_3_4_PLUS",
    "AirflowFailException",
    "AirflowNotFoundException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "conf",
    "mask_secret",
]


def _base_version_tuple() -> tuple[int, int, int]:
    major, minor, micro = (*Version(_airflow_version).release, 0, 0, 0)[:3]
    return (major, minor, micro)


AIRFLOW_V_3_2_PLUS = _base_version_tuple() >= (3, 2, 0)
AIRFLOW_V_3_3_PLUS = _base_version_tuple() >= (3, 3, 0)
AIRFLOW_V_3_4_PLUS = _base_version_tuple() >= (3, 4, 0)

try:
    from airflow.sdk import conf
except ImportError:  # Airflow 3.1: the Task SDK does not export the configuration yet.
    # Airflow types its core and Task SDK parsers as two unrelated classes; both answer get/getint/getboolean.
    from airflow.configuration import conf  # type: ignore[assignment]

try:
    from airflow.sdk.exceptions import AirflowNotFoundException, AirflowSensorTimeout, AirflowSkipException
except ImportError:  # Airflow 3.1 has them in airflow.exceptions only.
    # no-redef: Airflow 3.2+ serves these names from an untyped module __getattr__ (deprecated aliases).
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowNotFoundException,
        AirflowSensorTimeout,
        AirflowSkipException,
    )

try:
    # Fails the task at once, without its retries (the task runner checks for this class).
    from airflow.sdk.exceptions import AirflowFailException
except ImportError:  # Airflow 3.1
    # no-redef: as above, an untyped module __getattr__ alias in Airflow 3.2+.
    from airflow.exceptions import AirflowFailException  # type: ignore[no-redef]


try:
    from airflow.sdk.log import mask_secret
except ImportError:  # Task SDKs without it: nothing to register the value with.

    def mask_secret(secret: str | dict[str, Any], name: str | None = None) -> None:  # type: ignore[misc]
        """Register nothing (this Airflow cannot redact values)."""


def __getattr__(name: str) -> Any:
    if name in ("SharedStreamProducer", "AdvanceItem"):
        try:
            from airflow.triggers import shared_stream
        except ImportError:  # Airflow 3.1/3.2: no shared streams
            return None
        return getattr(shared_stream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
