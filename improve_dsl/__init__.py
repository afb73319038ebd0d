"""improve: a language for image-classification pipelines, a compiler, and refinement."""

__version__ = "0.1.0"
