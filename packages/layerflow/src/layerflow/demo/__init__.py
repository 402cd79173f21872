"""The embedded default demo: synthetic data, three training stages, four tasks, layered outputs, metrics.

``python -m layerflow.demo [--quick] [--output-dir DIR] [--cache-dir DIR]``; see :mod:`.run`.
"""

from .assets import DemoAssetConfig, DemoAssets, default_cache_dir, load_or_build_assets
from .run import DemoResult, DemoSettings, main, run_demo

__all__ = [
    "DemoAssetConfig",
    "DemoAssets",
    "DemoResult",
    "DemoSettings",
    "default_cache_dir",
    "load_or_build_assets",
    "main",
    "run_demo",
]
