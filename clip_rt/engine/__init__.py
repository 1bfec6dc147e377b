"""How embeddings are computed: execution sessions and providers, the GPU path, the prompt-embedding cache."""
