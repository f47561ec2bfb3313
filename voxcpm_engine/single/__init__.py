"""One request without batching: the readable generation loop the batched engine is checked against."""
