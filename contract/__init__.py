"""The train/serve contract: the only code that both `training` and `app` import.

Everything that decides which ids a text becomes (normalization, tokenization,
vocabulary, truncation, padding) and what an exported model file must carry
lives here, so a train/serve skew cannot happen by construction.
"""
