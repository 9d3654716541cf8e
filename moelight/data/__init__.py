"""Training data: tokenizers, pre-training corpora and instruction (SFT) sets, and the Lightning DataModule.
Turns text into packed or padded token batches; knows nothing about the model."""
