"""Documents the service renders (the guidance report PDF)."""
