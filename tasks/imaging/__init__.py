"""Medical image files as ingest and inference both read and write them: NIfTI, DICOM series, geometry."""
