"""Applications on top of the pipeline API: the Gradio demo, its chat session and the showcase page."""
