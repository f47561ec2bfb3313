"""Named voices: their on-disk files, validation of new ones, the store, and the latent wire format."""
