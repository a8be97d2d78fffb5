"""One ``torchrun`` process of DDP training: ``python -m tasks.training.ddp_worker --root DIR [--params FILE]
[--set k=v]`` (``--params`` relative to ``--root``, as the flows read it).

Kept apart from :mod:`tasks.training.distributed` (which the trainer imports for its process context),
so the launcher, the context and the trainer import one another in one direction only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.config import load_params
from tasks.training.trainer import train_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one torchrun process of unetflow training")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--params", default=None)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    params_file = None if args.params is None else root / args.params
    train_model(load_params(params_file, args.set), root, resume=args.resume, params_file=params_file)


if __name__ == "__main__":
    main()
