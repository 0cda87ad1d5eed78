"""The HF architectures the in-engine search serves, and the pooling model class serving each (no vLLM import)."""

ARCHITECTURES = {"Qwen2ForCausalLM": "GrSidSearchQwen2", "LlamaForCausalLM": "GrSidSearchLlama"}
# Engine-wide search settings travel in the HF config under this key (hf_overrides={CONFIG_KEY: {...}}).
CONFIG_KEY = "gr_search"
