"""``python -m layerflow.demo.pretrain {vae,base}``: train the demo's frozen parts, write them where the demo finds them.

This is how the folders shipped with layerflow were made:

- ``vae``: :func:`~.assets.train_vae` on the default :class:`~.assets.DemoAssetConfig`, written to
  ``pretrained_vae/`` (about ``vae_steps`` x 0.4 s on one CPU thread);
- ``base``: :func:`~.base.train_base` on the default :class:`~.base.BaseRecipe`, the tiny
  text-to-video model LayerFlow fine-tunes, written to ``pretrained_base/`` with its measured quality
  (about ``steps`` x 0.15 s on one thread). ``--checkpoint-dir`` makes a long run resumable.

Run them after changing a default recipe: the demo then finds the new fingerprint.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from layerflow.tiny import single_thread

from .assets import (
    PRETRAINED_VAE_DIR,
    DemoAssetConfig,
    ceiling_misses,
    load_or_build_assets,
    save_pretrained_vae,
    train_vae,
)
from .base import PRETRAINED_BASE_DIR, BaseRecipe, measure_base, save_pretrained_base, train_base


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m layerflow.demo.pretrain", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="what", required=True, metavar="{vae,base}")
    for name, default, about in (
        ("vae", PRETRAINED_VAE_DIR, "the demo's VAE (DemoAssetConfig)"),
        ("base", PRETRAINED_BASE_DIR, "the tiny base video model (BaseRecipe)"),
    ):
        command = commands.add_parser(name, help=f"train {about}")
        command.add_argument(
            "--output", type=Path, default=default, help=f"where to write it (default: {default})"
        )
        command.add_argument(
            "--steps",
            type=_positive,
            default=None,
            help="training steps (default: the recipe's; part of the recipe)",
        )
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
    base = commands.choices["base"]
    base.add_argument(
        "--train-samples",
        type=_positive,
        default=None,
        help="synthetic samples to train on (default: the recipe's)",
    )
    base.add_argument("--checkpoint-dir", type=Path, default=None, help="checkpoint here and resume from it")
    base.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="the demo's VAE/T5 cache (default: ~/.cache/layerflow/demo)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    if args.what == "vae":
        config = DemoAssetConfig() if args.steps is None else replace(DemoAssetConfig(), vae_steps=args.steps)
        with single_thread():
            vae, ceiling, losses = train_vae(config, progress=progress)
        save_pretrained_vae(args.output, config, vae, ceiling, losses)
        missed = ceiling_misses(ceiling)
        print(
            f"wrote {args.output} (recipe {config.vae_fingerprint()}); ceiling "
            + ("met" if not missed else "missed: " + "; ".join(missed))
        )
        return 0
    recipe = BaseRecipe()
    if args.steps is not None:
        recipe = replace(
            recipe, steps=args.steps, schedule_steps=None, warmup_steps=min(recipe.warmup_steps, args.steps)
        )
    if args.train_samples is not None:
        recipe = replace(recipe, train_samples=args.train_samples)
    assets_config = DemoAssetConfig()
    with single_thread():
        assets = load_or_build_assets(assets_config, args.cache_dir, progress=progress)
        transformer, losses = train_base(
            recipe, assets, assets_config, progress=progress, checkpoint_dir=args.checkpoint_dir
        )
        quality = measure_base(recipe, assets, assets_config, transformer, progress=progress)
    save_pretrained_base(args.output, recipe, assets_config, transformer, quality, losses)
    measured = ", ".join(f"{name} {value:.3f}" for name, value in quality.items())
    print(f"wrote {args.output} (recipe {recipe.fingerprint(assets_config)}); {measured}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
