"""What the RIS tells the apps built on it, inside the transaction of the change.

Receivers run in the same transaction, so an outbox row or a study move they write
commits or rolls back together with the change (ris cannot import pacs or the
HL7 interface; they connect here instead).
"""

from __future__ import annotations

from django.dispatch import Signal

# sender=Patient; kwargs: patient, changed (field names), actor
patient_updated = Signal()
# sender=Patient; kwargs: survivor, merged, merged_identifiers (the merged patient's own,
# as they were before they moved to the survivor as aliases), actor
patients_merged = Signal()
# sender=Order; kwargs: order, old_status, new_status, actor
order_status_changed = Signal()
