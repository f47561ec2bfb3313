"""LoRA voices: the batched multi-adapter layers and the registry of named adapters in device slots."""
