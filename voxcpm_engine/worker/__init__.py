"""The GPU side of a step: the model runner, paged KV, CUDA graphs and the streaming VAE decode."""
