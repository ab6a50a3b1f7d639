"""Who used what: the usage ledger read and fed beside the core (`UsageLedger`)."""

from app.storage.usage_ledger import COUNTS
from app.usage.ledger import UsageLedger

__all__ = ["COUNTS", "UsageLedger"]
