"""md.eval."""
