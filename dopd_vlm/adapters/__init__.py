"""Model adapters: one file per family, chosen from the checkpoint config's ``model_type``.

``get_adapter(name_or_path_or_config)`` accepts a checkpoint folder, a Hub id (offline: cached),
a transformers config or a config dict, or a family name ("qwen3_vl", "causal_lm", ...; a folder
of that name wins). VL families are matched by ``model_type`` (qwen2_vl, qwen2_5_vl, qwen3_vl,
idefics3); any other ``model_type`` that transformers maps to a causal LM gets the text-only
adapter. The contract is documented in ``adapters/base.py``.
"""

from __future__ import annotations

from pathlib import Path

from dopd_vlm.adapters.base import BOX_FORMATS, Adapter, AdapterError, read_model_type
from dopd_vlm.adapters.causal_lm import CausalLMAdapter
from dopd_vlm.adapters.idefics3 import Idefics3Adapter
from dopd_vlm.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from dopd_vlm.adapters.qwen2_vl import Qwen2VLAdapter
from dopd_vlm.adapters.qwen3_vl import Qwen3VLAdapter

VL_ADAPTERS: tuple[type[Adapter], ...] = (Qwen2VLAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter, Idefics3Adapter)
FAMILIES = {cls.family: cls for cls in (*VL_ADAPTERS, CausalLMAdapter)}
_BY_MODEL_TYPE = {mt: cls for cls in VL_ADAPTERS for mt in cls.model_types}


def adapter_for_model_type(model_type: str, config=None) -> Adapter:
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type](config)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return CausalLMAdapter(config)
    raise AdapterError(f"no adapter for model_type {model_type!r}: supported VL model types "
                       f"{sorted(_BY_MODEL_TYPE)} or any text-only causal LM known to transformers")


def get_adapter(name_or_path_or_config) -> Adapter:
    """The adapter of a checkpoint folder / config / config dict / family name."""
    if (isinstance(name_or_path_or_config, str) and name_or_path_or_config in FAMILIES
            and not Path(name_or_path_or_config).is_dir()):
        return FAMILIES[name_or_path_or_config]()
    model_type, config = read_model_type(name_or_path_or_config)
    return adapter_for_model_type(model_type, config)


__all__ = ["Adapter", "AdapterError", "BOX_FORMATS", "FAMILIES", "get_adapter", "adapter_for_model_type",
           "CausalLMAdapter", "Qwen2VLAdapter", "Qwen2_5_VLAdapter", "Qwen3VLAdapter",
           "Idefics3Adapter"]
