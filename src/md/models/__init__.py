"""md.models."""
