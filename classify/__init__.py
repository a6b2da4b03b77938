"""cardiac-ldm: classify."""
