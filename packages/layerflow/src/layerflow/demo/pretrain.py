"""``python -m layerflow.demo.pretrain``: train the demo's VAE and write it where the demo finds it.

This is how ``pretrained_vae/`` (shipped with layerflow) was made: :func:`~.assets.train_vae` on the
default :class:`~.assets.DemoAssetConfig`, then :func:`~.assets.save_pretrained_vae`. Run it after
changing the default recipe (the demo then finds the new fingerprint); on one CPU thread it takes
about ``vae_steps`` x 0.4 s.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from layerflow.tiny import single_thread

from .assets import PRETRAINED_VAE_DIR, DemoAssetConfig, ceiling_misses, save_pretrained_vae, train_vae


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m layerflow.demo.pretrain", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=PRETRAINED_VAE_DIR,
        help=f"where to write it (default: {PRETRAINED_VAE_DIR})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps (default: the recipe's vae_steps; part of the recipe)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    config = DemoAssetConfig() if args.steps is None else replace(DemoAssetConfig(), vae_steps=args.steps)
    with single_thread():
        vae, ceiling, losses = train_vae(config, progress=not args.no_progress)
    save_pretrained_vae(args.output, config, vae, ceiling, losses)
    missed = ceiling_misses(ceiling)
    print(
        f"wrote {args.output} (recipe {config.vae_fingerprint()}); ceiling "
        + ("met" if not missed else "missed: " + "; ".join(missed))
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
