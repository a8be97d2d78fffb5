"""Preprocess: decide the plan from the data (``planning``), then normalise every case and attach its
cached weight map (``cases``, ``weight_map_cache``); intensity statistics come from training cases only."""
