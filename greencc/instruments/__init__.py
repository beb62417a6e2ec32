"""The built-in pipeline instruments the driver installs: numerical verification after
each pass (``verify``) and the per-pass ledger (``ledger``)."""
