"""mbert_jax: task-agnostic BERT compression in JAX/Flax."""

__version__ = "0.1.0"
