"""Shape limits of the fused kernels, importable without Triton (the model checks them to pick a path)."""

SHORT_ATTENTION_MAX = 32  # longest sequence of kernels.fused.short_attention (DiT: 9-11, encoder: 3-5)
