"""The VoxCPM HTTP server: admission control, a fair inference queue and streaming audio over the engine."""
