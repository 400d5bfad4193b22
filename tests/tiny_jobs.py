"""Job files the integration tests share: the smallest `negseq run` that trains two steps."""

TWO_STEP_RUN = """
name = "{name}"

[data]
{data}
max_seq_len = 10

[sampler.negative_sampler]
num_sample = 4

[candidates]
neg_per_pos = 4
batch_size = 64

[model]
embedding_dim = 16
num_layers = 1

[train]
epochs = 1
max_steps = 2

[ray]
executor = "local"

[output]
dir = "{out}"
write_samples = true
"""
