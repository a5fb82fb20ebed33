"""SimPy simulator of offloaded MoE decoding (see DESIGN §1, §5)."""
