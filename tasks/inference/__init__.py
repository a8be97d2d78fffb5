"""Inference: find studies (``inputs``), read them (``studies``), segment (``segment``, ``sliding_window``,
``postprocess``), write masks and DICOM SEG, batch it resumably (``batch``)."""
