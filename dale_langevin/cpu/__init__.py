"""CPU tuning, kept out of the model and the math: XLA:CPU convolutions and the host allocator."""
