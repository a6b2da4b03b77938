"""cardiac-ldm: run — the whole-run config, the stage table and the stage drivers (above every library package)."""
