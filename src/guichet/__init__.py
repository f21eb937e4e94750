"""guichet: an API gateway with a Kong-compatible declarative configuration."""

__version__ = "0.1.0"
