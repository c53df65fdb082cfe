"""Image rendering helpers (previews of stored DICOM frames)."""
