"""The LanceDB side: the tables' handle, the table lock, the single writer and its commit order, the
compact state a run plans against, and upkeep (indices, compaction, version cleanup)."""
