"""Airflow notifiers that post into Neoleads conversations."""

from __future__ import annotations

from neoleads_provider.notifications.neoleads import NeoleadsNotifier, send_neoleads_notification

__all__ = ["NeoleadsNotifier", "send_neoleads_notification"]
