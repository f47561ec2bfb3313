"""PyTorch modules of the VoxCPM family (state-dict names follow the official checkpoints)."""
