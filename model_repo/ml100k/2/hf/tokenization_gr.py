"""Word-level tokenizer of a gr-serve model-repo version: loads tokenizer.json as-is."""

from transformers import TokenizersBackend


class GrWordLevelTokenizer(TokenizersBackend):
    """AutoTokenizer would map model_type qwen2 to Qwen2Tokenizer, which rebuilds a byte-level BPE."""
