"""Talking to a hospital PACS: find series, fetch them, store results back, over DICOMweb or DIMSE.

``transport`` holds the types both transports share (so the sync logic never depends on which one is
configured), ``dicomweb`` and ``dimse`` the two implementations, ``orthanc`` a throwaway local Orthanc
for tests and for trying the sync out without a hospital.
"""
