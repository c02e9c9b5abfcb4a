"""The embedded engine: in-process generation on transformers models (CPU and CUDA)."""
