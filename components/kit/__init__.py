"""Shared helpers: what several stages or both tasks use. Nothing here imports a task package."""
