"""Evaluation: test-set metrics of a trained model, and the variant bake-off (``compare``)."""
