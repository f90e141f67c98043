"""md.stores."""
