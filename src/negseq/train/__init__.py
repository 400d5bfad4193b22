"""Training: the loop over `JaggedBatch`es, checkpoints, and the in-process and Ray Train runners."""
