"""Pass infrastructure: the pass contract, textual pipelines, context, instruments, manager."""
