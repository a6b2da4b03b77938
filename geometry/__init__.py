"""cardiac-ldm: geometry."""
