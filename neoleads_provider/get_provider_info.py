"""Provider metadata that Airflow discovers through the ``apache_airflow_provider`` entry point.

Kept free of imports beyond the standard library: Airflow calls this in every process at start-up.
"""

from __future__ import annotations

from typing import Any

PACKAGE = "neoleads_provider"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: hook, operators, sensor, triggers, notifier, connection form, links, config, plugin, CLI."""
    return {
        "package-name": "airflow-provider-neoleads",
        "name": "Neoleads",
        "description": "Drive the Neoleads customer-messaging platform from Airflow: contacts, conversations, "
        "messages, and verified webhooks that sensors and event-driven DAGs wait on.",
        "integrations": [
            {
                "integration-name": "Neoleads",
                "external-doc-url": "https://github.com/neoleads/airflow-provider-neoleads/tree/main/docs",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "Neoleads", "python-modules": [f"{PACKAGE}.hooks.neoleads"]}],
        "operators": [
            {
                "integration-name": "Neoleads",
                "python-modules": [
                    f"{PACKAGE}.operators.contacts",
                    f"{PACKAGE}.operators.conversations",
                    f"{PACKAGE}.operators.messages",
                    f"{PACKAGE}.operators.bulk",
                ],
            }
        ],
        "sensors": [{"integration-name": "Neoleads", "python-modules": [f"{PACKAGE}.sensors.webhook"]}],
        "triggers": [
            {
                "integration-name": "Neoleads",
                "python-modules": [f"{PACKAGE}.triggers.webhook", f"{PACKAGE}.triggers.events"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "neoleads",
                "hook-class-name": f"{PACKAGE}.hooks.neoleads.NeoleadsHook",
                "hook-name": "Neoleads",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API access token"},
                    # Airflow's form applies placeholders to these standard fields only; the extra fields
                    # carry their examples in their descriptions.
                    "placeholders": {
                        "host": "https://app.neoleads.com",
                        "password": "The access token from your Neoleads profile page",
                    },
                },
                # Every field may be null: Airflow's form marks a non-null type as an error ("required")
                # before anything is typed. The hook refuses a connection without account_id, naming it,
                # and reads null as "use the default". A "default" is what the Add form saves; "minimum" is
                # what the form enforces (it ignores exclusiveMinimum). The form asks for at least 1 s; the
                # hook takes any positive number set another way (JSON extra, CLI, secrets backend).
                "conn-fields": {
                    "account_id": {
                        "label": "Account ID (required)",
                        "description": "The Neoleads account to act in: the number in /app/accounts/<id>/ "
                        "of the web app, e.g. 1.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "description": "Per-request timeout. Default 30.",
                        "schema": {
                            "type": ["number", "null"],
                            "default": 30,
                            "minimum": 1,
                            "exclusiveMinimum": 0,
                        },
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries for safe-to-replay failures (connection errors, 502/503/504 on "
                        "reads). Default 5.",
                        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
                    },
                    "rate_limit_max_wait": {
                        "label": "Rate-limit wait (seconds)",
                        "description": "How long to keep backing off on 429 before failing. Default 90.",
                        "schema": {
                            "type": ["number", "null"],
                            "default": 90,
                            "minimum": 1,
                            "exclusiveMinimum": 0,
                        },
                    },
                    "web_url": {
                        "label": "Web app URL",
                        "description": "Base URL for links to conversations and contacts, when it differs "
                        "from the API base URL.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "webhook_secrets": {
                        "label": "Webhook secrets",
                        "description": "Signing secrets accepted by the webhook receiver, separated by commas "
                        "(several allow rotation), e.g. secret-1, secret-2.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "webhook_header_prefix": {
                        "label": "Webhook header prefix",
                        "description": "Prefix of the signature headers. Default X-Chatwoot-.",
                        "schema": {"type": ["string", "null"], "default": "X-Chatwoot-"},
                    },
                    "webhook_tolerance_seconds": {
                        "label": "Webhook timestamp tolerance (seconds)",
                        "description": "Deliveries signed further than this from now are refused. Default 300.",
                        "schema": {"type": ["integer", "null"], "default": 300, "minimum": 1},
                    },
                    "webhook_allow_unsigned": {
                        "label": "Allow unsigned webhooks",
                        "description": "For servers older than 4.11.2, which do not sign. Requires the URL token.",
                        "schema": {"type": ["boolean", "null"], "default": False},
                    },
                    "webhook_url_token": {
                        "label": "Webhook URL token",
                        "description": "Required with unsigned webhooks: senders must add ?token=<this> to the URL.",
                        "schema": {"type": ["string", "null"], "format": "password"},
                    },
                    "inbox_id": {
                        "label": "API inbox ID",
                        "description": "The API inbox whose webhook feeds the receiver. `neoleads inboxes create` "
                        "sets it; `neoleads doctor` checks that inbox.",
                        "schema": {"type": ["integer", "null"], "minimum": 1},
                    },
                },
            }
        ],
        "extra-links": [
            f"{PACKAGE}.links.NeoleadsConversationLink",
            f"{PACKAGE}.links.NeoleadsContactLink",
        ],
        "config": {
            "neoleads": {
                "description": "Settings of the Neoleads provider.",
                "options": {
                    "events_db_url": {
                        "description": "SQLAlchemy URL of the webhook event store shared by the receiver, "
                        "sensors and triggers. Empty means a SQLite file neoleads_events.db in AIRFLOW_HOME; "
                        "use PostgreSQL when several machines share it.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "postgresql+psycopg://user:pass@db:5432/neoleads",
                        "default": "",
                        "sensitive": True,
                    },
                    "webhook_max_body_bytes": {
                        "description": "The largest webhook body the receiver accepts (413 beyond it), on the "
                        "API server and in `neoleads webhooks serve`. Email inboxes' message_created carry the "
                        "mail's HTML: raise it if the log shows 413s for them.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "16777216",
                        "default": "4194304",
                    },
                },
            }
        },
        "notifications": [f"{PACKAGE}.notifications.neoleads.NeoleadsNotifier"],
        "plugins": [{"name": "neoleads", "plugin-class": f"{PACKAGE}.plugins.NeoleadsPlugin"}],
        # `airflow neoleads ...` (Airflow 3.2+; older versions ignore the key and use the `neoleads` script).
        "cli": [f"{PACKAGE}.cli.airflow_cli.get_cli_commands"],
    }
