"""md.data."""
