"""Attention: angular LSH hashing, the chunked kernel, full / local / LSH attention as pure
functions on one head (`lsh.py`), the Flax self- and cross-attention modules, their
decoding caches, and the primitives they share with the model's layers (`primitives.py`)."""
