"""Reports: the per-pass ledger (JSON, versioned schema) and its console rendering."""
