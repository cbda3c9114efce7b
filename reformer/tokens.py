"""The special token ids every vocabulary shares: 0 padding (also the decoder's first
input, and never attended to by an encoder), 1 end, and 2 unknown in the translation
vocabulary (`data/tokenizer.py`). Byte ids start after padding and end (`data/text.py`).
This module imports nothing, so the model and the data can both read it."""

PAD_ID = 0
END_ID = 1
UNK_ID = 2
