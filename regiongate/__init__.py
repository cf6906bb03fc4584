"""regiongate: a self-hosted front door for multi-region LLM inference."""

__version__ = "0.1.0"
