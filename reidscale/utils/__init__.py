"""Small helpers shared by every part of reidscale: atomic file writes, rank discovery, provenance."""
