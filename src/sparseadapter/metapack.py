"""The metadata of a sparse checkpoint (format version 3): canonical JSON compressed with raw
DEFLATE and a preset dictionary.

The metadata (adapter and head configs, base-model fingerprint, sparsity config, versions) is
about 2 KB of JSON whose keys and most values recur in every checkpoint: with a dictionary that
holds one typical AdapterHub and one typical PEFT checkpoint's metadata it packs to a few hundred
bytes (measured: benchmarks/results/checkpoint_size.md). The dictionary is part of the format: it never
changes within a format version (a newer library's new config fields only compress less).
``sparseadapter inspect PATH`` prints the metadata as JSON.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

# version 3's dictionary: two checkpoints' canonical metadata (hashes and paths blanked)
DICTIONARY = (
    b'{"adapter_config":{"adapter_residual_before_ln":false,"cross_adapter":false,"dropout":'
    b'0.0,"factorized_phm_W":true,"factorized_phm_rule":false,"hypercomplex_nonlinearity":"g'
    b'lorot-uniform","init_weights":"bert","init_weights_seed":null,"inv_adapter":null,"inv_'
    b'adapter_reduction_factor":null,"is_parallel":false,"learn_phm":true,"leave_out":[],"ln'
    b'_after":false,"ln_before":false,"mh_adapter":true,"non_linearity":"swish","original_ln'
    b'_after":true,"original_ln_before":false,"output_adapter":true,"phm_bias":true,"phm_c_i'
    b'nit":"normal","phm_dim":4,"phm_init_range":0.0001,"phm_layer":false,"phm_rank":1,"redu'
    b'ction_factor":16,"residual_before_ln":true,"scaling":1.0,"shared_W_phm":false,"shared_'
    b'phm_rule":true,"stochastic_depth":0.0,"use_gating":false},"adapter_name":"task","base_'
    b'model":{"embedding_dtype":"float32","embedding_sha256":"","hidden_size":384,"model_typ'
    b'e":"bert","name_or_path":"","num_attention_heads":12,"num_hidden_layers":6,"num_labels'
    b'":2,"vocab_size":30522},"format":"sparseadapter-sparse-checkpoint","format_version":2,'
    b'"group_size":64,"heads":{},"library":"adapterhub","masks":{"coding":"rice"},"precision'
    b'":"int4","sha256":"","sparsity_config":{"exclude":["(^|\\\\.)(classifier|classification_'
    b'head|score|qa_outputs|lm_head|heads|modules_to_save|original_module)(\\\\.|$)"],"grasp_t'
    b'emperature":200.0,"include":null,"method":"magnitude","num_examples":320,"prune_biases'
    b'":false,"prune_norms":false,"scope":"global","seed":0,"sparsity":0.95,"synflow_rounds"'
    b':1,"zero_init":"surrogate"},"tensors":{"count":50,"pruned":[0,2,4,6,8,10,12,14,16,18,2'
    b'0,22,24,26,28,30,32,34,36,38,40,42,44,46],"sha256":""},"versions":{"adapters":"1.3.0",'
    b'"safetensors":"0.8.0","sparseadapter":"0.1.0","torch":"2.13.0+cpu","transformers":"4.5'
    b'7.6"}}{"adapter_config":{"alora_invocation_tokens":null,"alpha_pattern":{},"arrow_conf'
    b'ig":null,"auto_mapping":null,"base_model_name_or_path":"","bias":"none","corda_config"'
    b':null,"ensure_weight_tying":false,"eva_config":null,"exclude_modules":null,"fan_in_fan'
    b'_out":false,"inference_mode":false,"init_lora_weights":true,"kasa_config":null,"layer_'
    b'replication":null,"layers_pattern":null,"layers_to_transform":null,"loftq_config":{},"'
    b'lora_alpha":32,"lora_bias":false,"lora_dropout":0.0,"lora_ga_config":null,"megatron_co'
    b'nfig":null,"megatron_core":"megatron.core","modules_to_save":["classifier","score"],"m'
    b'onteclora_config":null,"peft_type":"LORA","peft_version":"0.21.2","qalora_group_size":'
    b'16,"r":8,"rank_pattern":{},"revision":null,"target_modules":["query","value"],"target_'
    b'parameters":null,"task_type":"SEQ_CLS","trainable_token_indices":null,"use_bdlora":nul'
    b'l,"use_dora":false,"use_qalora":false,"use_rslora":false,"velora_config":null},"adapte'
    b'r_name":"default","base_model":{"embedding_dtype":"float32","embedding_sha256":"","hid'
    b'den_size":384,"model_type":"bert","name_or_path":"","num_attention_heads":12,"num_hidd'
    b'en_layers":6,"num_labels":2,"vocab_size":30522},"format":"sparseadapter-sparse-checkpo'
    b'int","format_version":2,"group_size":64,"heads":{},"library":"peft","masks":{"coding":'
    b'"random","sha256":""},"precision":"int4","sha256":"","sparsity_config":{"exclude":["(^'
    b"|\\\\.)(classifier|classification_head|score|qa_outputs|lm_head|heads|modules_to_save|or"
    b'iginal_module)(\\\\.|$)"],"grasp_temperature":200.0,"include":null,"method":"random","nu'
    b'm_examples":320,"prune_biases":false,"prune_norms":false,"scope":"global","seed":0,"sp'
    b'arsity":0.95,"synflow_rounds":1,"zero_init":"surrogate"},"tensors":{"count":26,"pruned'
    b'":[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23],"sha256":""},"versio'
    b'ns":{"peft":"0.21.2","safetensors":"0.8.0","sparseadapter":"0.1.0","torch":"2.13.0+cpu'
    b'","transformers":"4.57.6"}}'
)
_WBITS = -15  # raw DEFLATE: no zlib header or checksum (the checkpoint's SHA-256 covers it)


def canonical(meta: dict[str, Any]) -> bytes:
    """The metadata as compact JSON with sorted keys: what is checksummed and packed."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def pack(meta: dict[str, Any]) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
    return packer.compress(canonical(meta)) + packer.flush()


def unpack(data: bytes) -> dict[str, Any]:
    """The metadata ``pack`` wrote; ``ValueError`` for bytes that are not packed metadata."""
    unpacker = zlib.decompressobj(_WBITS, DICTIONARY)
    try:
        text = unpacker.decompress(data) + unpacker.flush()
        meta = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(str(err)) from None
    if not unpacker.eof or unpacker.unused_data or not isinstance(meta, dict):
        raise ValueError("not one complete packed JSON object")
    return meta
