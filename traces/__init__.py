"""Where lookahead traces come from: collection on Hugging Face checkpoints, importers, synthetic generators."""
