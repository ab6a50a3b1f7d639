"""The OpenAI Responses API's stored responses (`StoredResponses`), built beside the core:
each an index over the stored run that produced it."""

from app.responses.store import ConversationBroken, ResponseRecord, StoredResponses, StoredTurn

__all__ = ["ConversationBroken", "ResponseRecord", "StoredResponses", "StoredTurn"]
