"""VoxCPM inference engine: models, checkpoints, generation."""
