"""Training: execute the plan — build the network, fit it (one process or DDP), checkpoint, track."""
