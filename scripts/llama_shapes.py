"""Random-weight Llama shapes for the GPU checks and benchmarks (no torch needed here)."""

SHAPES = {
    # A 1B-class model (Llama-3.2-1B's layout, 32k vocabulary to keep the file small).
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=32000),
    # Llama-3-8B's config.
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
}
