"""Verification: reference runs, equivalence and fidelity checks, divergence bisection."""
