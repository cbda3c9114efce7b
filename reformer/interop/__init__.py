"""Other implementations' checkpoints: HuggingFace's Reformer in (`hf_import`) and out
(`hf_export`), by the one correspondence of `hf_names`."""
