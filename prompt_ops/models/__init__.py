"""Hugging Face integration (attach to a model, masks, labels, generation, adapters). Not yet populated."""
