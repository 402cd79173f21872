"""Switchable, alpha-scaled LoRA adapters with per-sample gates (LayerFlow motion/content LoRAs)."""

from importlib.metadata import version as _version

from .config import AdapterConfig
from .gates import AdapterGate
from .importers import (
    LAYERFLOW_OFFICIAL_ADAPTERS,
    ImportedAdapter,
    ModuleLora,
    from_animatediff,
    from_diffusers,
    from_layerflow_official,
    from_native,
    from_peft,
    split_fused_lora,
)
from .io import attach_adapter, load_adapter, load_layerflow_official, read_state_dict, save_adapter
from .layer import MultiLoraLinear
from .model import (
    adapter_layers,
    adapter_state_dict,
    add_adapter,
    delete_adapter,
    disable_adapter,
    enable_adapter,
    get_adapter_config,
    get_scale,
    list_adapters,
    merge_adapter,
    set_scale,
    set_trainable,
    trainable_parameters,
    unmerge_adapter,
)

__version__ = _version("multi-lora")

__all__ = [
    "LAYERFLOW_OFFICIAL_ADAPTERS",
    "AdapterConfig",
    "AdapterGate",
    "ImportedAdapter",
    "ModuleLora",
    "MultiLoraLinear",
    "adapter_layers",
    "adapter_state_dict",
    "add_adapter",
    "attach_adapter",
    "delete_adapter",
    "disable_adapter",
    "enable_adapter",
    "from_animatediff",
    "from_diffusers",
    "from_layerflow_official",
    "from_native",
    "from_peft",
    "get_adapter_config",
    "get_scale",
    "list_adapters",
    "load_adapter",
    "load_layerflow_official",
    "merge_adapter",
    "read_state_dict",
    "save_adapter",
    "set_scale",
    "set_trainable",
    "split_fused_lora",
    "trainable_parameters",
    "unmerge_adapter",
]
