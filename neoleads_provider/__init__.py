"""Apache Airflow provider for Neoleads, the customer-messaging platform."""

from __future__ import annotations

__version__ = "0.1.0"
