"""The PyTorch targets: ``torch-inductor`` (the model lowered to torch, compiled ahead of time by
Inductor). Torch is imported only when the target is used."""
