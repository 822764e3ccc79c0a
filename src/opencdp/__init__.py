"""OpenCDP: a self-hosted customer data platform that speaks the APIs your tools already use."""

__version__ = "0.1.0"
