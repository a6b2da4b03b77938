"""cardiac-ldm: ddpm."""
