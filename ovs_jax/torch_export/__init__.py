"""PyTorch export of trained models: pure-PyTorch MAFT+ inference (`maft_plus_torch`, torch only)
and the JAX-side conversion (`checkpoint`: `to_torch`, `from_torch`). See docs/interchange.md."""
