"""Command-line tools and fixtures: synthesize from a shell, random-weight checkpoints, tokenizers and adapters."""
