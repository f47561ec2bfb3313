"""Audio out: the response formats, the streaming encoders, and the HTTP responses that carry them."""
