"""Kasmina: the morphogenetic plane (seed slots, their lifecycle, blueprints and blending)."""
