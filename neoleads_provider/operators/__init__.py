"""Neoleads operators."""

from __future__ import annotations

from neoleads_provider.operators.bulk import NeoleadsBulkMessageOperator
from neoleads_provider.operators.contacts import NeoleadsCreateContactOperator
from neoleads_provider.operators.conversations import NeoleadsCreateConversationOperator
from neoleads_provider.operators.messages import NeoleadsSendMessageOperator

__all__ = [
    "NeoleadsBulkMessageOperator",
    "NeoleadsCreateContactOperator",
    "NeoleadsCreateConversationOperator",
    "NeoleadsSendMessageOperator",
]
