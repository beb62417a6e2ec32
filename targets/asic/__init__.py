"""``asic-int8``: an int8 systolic-array accelerator lowered through TVM, with its
specification, a bit-exact functional simulator and a host reference."""
