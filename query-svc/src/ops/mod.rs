//! Operations on the read model: rebuild from the ledger, reconcile, dead-letter replay.
