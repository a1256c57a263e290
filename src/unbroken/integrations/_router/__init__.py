"""The drop-in FastAPI chat router; its public names are in `unbroken.fastapi`."""
