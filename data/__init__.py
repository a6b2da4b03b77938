"""cardiac-ldm: data."""
