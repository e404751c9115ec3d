"""Public checkpoints through anygen: converters for Chameleon/Anole, Janus and Emu3, and transformers' audio codecs."""
