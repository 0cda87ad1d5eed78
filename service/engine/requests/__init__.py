"""The per-beam-request search path: one vLLM request per live beam and level (portable; the test oracle)."""
