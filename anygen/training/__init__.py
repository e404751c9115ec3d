"""Training recipes (tokenizers; later the core and decoders) and the shared checkpoint module."""
