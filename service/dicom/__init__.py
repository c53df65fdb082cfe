"""DICOM transport: the pynetdicom Application Entity and its event handlers (thin over the service layer)."""
