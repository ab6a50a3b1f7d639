"""What the layers above the core (access, API, wiring) need about database outages: how
to tell one (`is_outage`, `OUTAGE_TYPES`), what says a request must wait for the database
(`DatabaseUnavailable`, `SpoolFull`), and the spool results go to meanwhile (`RowSpool`,
`SpoolDepth`). They live in `app.storage`; this is their door for code that may not
import it.
"""

from app.storage.outage import OUTAGE_TYPES, DatabaseUnavailable, SpoolFull, is_outage
from app.storage.spool import RowSpool, SpoolDepth

__all__ = [
    "OUTAGE_TYPES",
    "DatabaseUnavailable",
    "RowSpool",
    "SpoolDepth",
    "SpoolFull",
    "is_outage",
]
