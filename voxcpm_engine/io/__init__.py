"""What comes from disk into the engine: checkpoints, the tokenizer, prompt audio, LoRA files."""
