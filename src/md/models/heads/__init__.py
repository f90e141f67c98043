"""md.models.heads."""
