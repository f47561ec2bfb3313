"""Text before the engine: cleaning and normalization, and splitting long input into engine-sized segments."""
