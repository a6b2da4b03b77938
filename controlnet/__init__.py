"""cardiac-ldm: controlnet."""
