"""The webhook receiver: ``POST {URL_PREFIX}/webhooks/{conn_id}`` verifies, stores and acknowledges deliveries.

Importing this package costs nothing (it imports nothing): the Airflow plugin reads :data:`URL_PREFIX` from
here in every Airflow process, and builds the app (:func:`neoleads_provider.webhooks.app.create_app`) only in
the API server.
"""

from __future__ import annotations

__all__ = ["DEFAULT_HEADER_PREFIX", "DEFAULT_TOLERANCE_SECONDS", "URL_PREFIX", "URL_TOKEN_SCOPE_KEY"]

# Defined in this leaf module so that the connection settings (which every part of the provider reads) and
# the verifier share them without the settings importing the receiver.
#: The signing headers' prefix: ``X-Chatwoot-Signature``, ``-Timestamp`` and ``-Delivery``.
DEFAULT_HEADER_PREFIX = "X-Chatwoot-"
#: How far a delivery's timestamp may be from now (Neoleads itself does no replay protection).
DEFAULT_TOLERANCE_SECONDS = 300

#: Where the receiver is mounted, on the Airflow API server and by ``neoleads webhooks serve`` alike.
URL_PREFIX = "/neoleads"
#: Where the receiver finds a ``?token=`` that the plugin's root middleware took out of the query string.
URL_TOKEN_SCOPE_KEY = "neoleads.url_token"
