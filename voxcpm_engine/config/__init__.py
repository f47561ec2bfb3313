"""Configuration, validated once: the checkpoint's model config, the engine's limits, the released presets."""
