"""Resampling is deliberately absent: parity inputs are already at the model's rate."""


def resample(*args, **kwargs):
    raise NotImplementedError("parity stub: feed audio at the VAE sample rate so no resampling happens")
