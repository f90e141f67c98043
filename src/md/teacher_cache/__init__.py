"""md.teacher_cache."""
