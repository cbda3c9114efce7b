"""Other implementations' checkpoints: HuggingFace's Reformer."""
