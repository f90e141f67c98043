"""md.student_train."""
