"""cardiac-ldm: evaluation."""
