"""Decoders that render a span of codes as media (the tokenizer's own VQ decoder, diffusion decoders)."""
