"""Helpers shared by several pass families: graph edits, the pattern-matching frame of
rewrite rules, and the attention-head analysis and layout tracing (fusion and pruning)."""
