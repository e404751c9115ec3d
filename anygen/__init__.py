"""anygen: unified understanding and generation over one vocabulary of text, image and audio tokens."""
