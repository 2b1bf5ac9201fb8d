"""Checkpoint format versions 2 and 3: version 1 and 2 files still load, mask coding, value
precision and the coding of integer values, random masks regenerated from the seed, and damaged
files refused."""

from __future__ import annotations

import math

import pytest
import safetensors.torch
import torch
from test_checkpoint import base_model, inputs, logits, sparse_model
from v1_checkpoint import save_v1

import sparseadapter as sa
from sparseadapter import maskcode
from sparseadapter import quantize as qz
from sparseadapter.checkpoint import (
    META_FILE,
    PACKED_META_FILE,
    WEIGHTS_FILE,
    checksum,
    load_sparse,
    read_metadata,
    save_sparse,
)
from sparseadapter.errors import CheckpointError, ConfigError
from sparseadapter.export import export_dense
from sparseadapter.metapack import canonical
from sparseadapter.quantize import PRECISIONS
from sparseadapter.sparsify import apply_masks, masked_parameters


def stored(path):
    return (
        read_metadata(path),
        safetensors.torch.load_file(path / WEIGHTS_FILE),
    )


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- version 1 files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sparsity", "dtype"),
    [(0.9, None), (0.99, None), (0.9, torch.float16)],  # bitmask, indices, half values
)
def test_version_1_files_still_load_bit_identically(sparsity, dtype, tmp_path):
    model, config = sparse_model("peft-lora", sparsity=sparsity, method="magnitude")
    save_v1(model, tmp_path / "v1", dtype=dtype)
    meta, tensors = stored(tmp_path / "v1")
    assert meta["format_version"] == 1
    encodings = {e["encoding"] for e in meta["pruned_tensors"].values()}
    assert ("indices" if sparsity == 0.99 else "bitmask") in encodings
    loaded = load_sparse(base_model(config), tmp_path / "v1")
    values = trained(loaded)
    for name, param in trained(model).items():
        expected = param if dtype is None else param.to(dtype).float()
        assert torch.equal(values[name], expected), name
    masks = sa.get_masks(loaded)
    assert all(torch.equal(masks[n], m) for n, m in sa.get_masks(model).items())
    if dtype is None:
        assert torch.equal(logits(loaded, inputs(config)), logits(model, inputs(config)))


# --- mask coding ------------------------------------------------------------------------------


def entropy_bits(kept: int, total: int) -> float:
    p = kept / total
    return total * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("density", [0.05, 0.1, 0.3])
def test_independent_masks_are_coded_near_the_entropy_bound(density):
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(shape, generator=g) < density for shape in [(384, 24), (24, 384), (7,)]]
    code = maskcode.encode_masks(masks)
    kept, total = sum(int(m.sum()) for m in masks), sum(m.numel() for m in masks)
    assert len(code) * 8 <= 1.08 * entropy_bits(kept, total)
    assert len(code) * 8 < total  # a packed bitmask costs one bit per weight
    decoded = maskcode.decode_masks(code, [tuple(m.shape) for m in masks])
    assert all(torch.equal(a, b) for a, b in zip(decoded, masks))


def test_structured_masks_take_the_smaller_coding():
    rows = torch.zeros(64, 96, dtype=torch.bool)
    rows[::4] = True  # whole rows kept: long runs, which LZMA codes in a few bytes
    code = maskcode.encode_masks([rows])
    keep = rows.flatten().numpy()
    assert maskcode.coding_name(code) == "lzma"
    assert len(code) == min(len(maskcode.lzma_code(keep)), len(maskcode.rice_code(keep)))
    assert len(code) < len(maskcode.rice_code(keep)) / 2
    assert torch.equal(maskcode.decode_masks(code, [(64, 96)])[0], rows)


@pytest.mark.parametrize("coder", [maskcode.rice_code, maskcode.lzma_code])
@pytest.mark.parametrize("pattern", ["none", "all", "first", "last", "odd"])
def test_both_codings_round_trip_edge_cases(coder, pattern):
    total = 77  # not a multiple of 8
    keep = torch.zeros(total, dtype=torch.bool)
    if pattern == "all":
        keep[:] = True
    elif pattern in ("first", "last"):
        keep[0 if pattern == "first" else -1] = True
    elif pattern == "odd":
        keep[1::2] = True
    shapes = [(7, 10), (7,)]
    code = coder(keep.numpy())
    decoded = torch.cat([m.flatten() for m in maskcode.decode_masks(code, shapes)])
    assert torch.equal(decoded, keep)


def test_a_damaged_mask_code_is_a_one_line_error():
    keep = torch.rand(500, generator=torch.Generator().manual_seed(0)) < 0.1
    code = maskcode.rice_code(keep.numpy())
    with pytest.raises(CheckpointError, match="mask coding is damaged"):
        maskcode.decode_masks(code[:20], [(500,)])
    with pytest.raises(CheckpointError, match="mask coding is damaged"):
        maskcode.decode_masks(bytes([9]) + code[1:], [(500,)])


# --- precision --------------------------------------------------------------------------------

# the most a value may move: relative to itself for floats (half a unit in the last place), and
# for integers half a quantization step of its tensor's largest value (scales rounded up to bf16)
FLOAT_ULP = {"bf16": 2**-8, "fp16": 2**-11}
INT_LEVELS = {"int8": 127, "int4": 7}


@pytest.mark.parametrize("precision", ["bf16", "fp16", "int8", "int4"])
@pytest.mark.parametrize(
    "family", ["peft-lora", pytest.param("houlsby", marks=pytest.mark.adapterhub)]
)
def test_lossy_precisions_keep_every_tensor_within_its_error_bound(precision, family, tmp_path):
    model, config = sparse_model(family, method="magnitude", sparsity=0.8)
    path = save_sparse(model, tmp_path / "ckpt", precision=precision)
    loaded = trained(load_sparse(base_model(config), path))
    masks = sa.get_masks(model)
    for name, original in trained(model).items():
        error = (loaded[name] - original).abs()
        if precision in FLOAT_ULP:
            assert (error <= original.abs() * FLOAT_ULP[precision]).all(), name
        else:
            step = original.abs().max() / INT_LEVELS[precision] * (1 + 2**-6)
            assert error.max() <= step / 2, name
            assert error.max() > 0 or not original.any(), name  # it is really quantized
        if name in masks:
            assert not loaded[name][~masks[name]].any(), name


@pytest.mark.parametrize("precision", PRECISIONS)
def test_stored_bytes_shrink_with_precision(precision, tmp_path):
    model, _ = sparse_model("peft-lora", method="magnitude", sparsity=0.5)
    fp32 = save_sparse(model, tmp_path / "reference")
    path = save_sparse(model, tmp_path / precision, precision=precision)
    meta, tensors = stored(path)
    _, full = stored(fp32)
    assert meta["precision"] == precision
    bits = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4}[precision]
    packed = math.ceil(full["values"].numel() * bits / 8)
    if precision.startswith("int"):  # a coding byte, then packed codes or fewer LZMA bytes
        assert tensors["values"].nbytes <= 1 + packed
    else:
        assert tensors["values"].nbytes == packed
    assert ("scales" in tensors) == precision.startswith("int")


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_integer_codes_take_the_smaller_coding(precision):
    torch.manual_seed(0)
    uniform = torch.rand(4096) * 2 - 1  # codes spread evenly: nothing to gain over packing
    mostly_zero = torch.where(torch.rand(4096) < 0.9, 0.0, torch.randn(4096))
    bits = {"int8": 8, "int4": 4}[precision]
    for values, coding in ((uniform, qz.PACKED), (mostly_zero, qz.LZMA)):
        coded = qz.quantize(values, [4096], precision)
        packed = qz.quantize(values, [4096], precision, coded=False)
        assert coded["values"][0] == coding
        if coding == qz.PACKED:
            assert coded["values"].numel() == 1 + 4096 * bits // 8
        else:
            assert coded["values"].numel() < 0.6 * 4096 * bits / 8
        # either way the same values come back as from the packed version 2 layout
        back = qz.dequantize(coded, [4096], precision, qz.GROUP_SIZE)
        assert torch.equal(back, qz.dequantize(packed, [4096], precision, qz.GROUP_SIZE, False))


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_version_2_integer_checkpoint_still_loads(precision, tmp_path):
    """Version 2 stored integer codes packed, without a coding byte, and plain JSON metadata."""
    model, config = sparse_model("peft-lora", method="magnitude", sparsity=0.8)
    path = save_sparse(model, tmp_path / "ckpt", precision=precision)
    current = dict(load_sparse(base_model(config), path).named_parameters())
    meta, tensors = stored(path)
    codes = qz._decoded(tensors["values"], precision, 10**12)  # every stored code
    tensors["values"] = qz._packed(codes, precision).contiguous()
    payload = safetensors.torch.save(tensors)
    meta["format_version"] = 2
    meta["sha256"] = checksum(payload, meta)
    (path / WEIGHTS_FILE).write_bytes(payload)
    (path / PACKED_META_FILE).unlink()
    (path / META_FILE).write_bytes(canonical(meta))
    loaded = load_sparse(base_model(config), path)
    for name, param in loaded.named_parameters():
        assert torch.equal(param, current[name]), name


def test_low_precision_dense_export_holds_the_dequantized_weights(tmp_path):
    model, config = sparse_model("peft-lora", method="magnitude")
    path = save_sparse(model, tmp_path / "int4", precision="int4")
    loaded = load_sparse(base_model(config), path)
    dense = export_dense(loaded, tmp_path / "dense", format="peft")
    exported = safetensors.torch.load_file(dense / "adapter_model.safetensors")
    lora = {n.replace(".default", ""): p for n, p in trained(loaded).items() if "lora_" in n}
    assert lora and all(torch.equal(exported[n], p) for n, p in lora.items())
    original = {n.replace(".default", ""): p for n, p in trained(model).items() if "lora_" in n}
    assert not all(torch.equal(exported[n], p) for n, p in original.items())


@pytest.mark.parametrize("dtype", ["float16", torch.float16])
def test_a_dtype_in_the_third_argument_still_means_that_dtype(dtype, tmp_path):
    model, _ = sparse_model("peft-lora")
    meta, tensors = stored(save_sparse(model, tmp_path / "ckpt", dtype))
    assert meta["precision"] == "fp16" and tensors["values"].dtype == torch.float16


def test_unknown_precision_is_a_one_line_error_listing_the_choices(tmp_path):
    model, _ = sparse_model("peft-lora")
    with pytest.raises(
        ConfigError, match="unknown precision 'int2': choose one of fp32, bf16, fp16, int8, int4"
    ):
        save_sparse(model, tmp_path / "ckpt", precision="int2")
    with pytest.raises(ConfigError, match="either precision= or its older alias dtype="):
        save_sparse(model, tmp_path / "ckpt", precision="fp16", dtype="float16")


# --- random masks from the seed ---------------------------------------------------------------


def test_random_masks_are_stored_as_the_seed(tmp_path):
    model, config = sparse_model("peft-lora", method="random", sparsity=0.9)
    meta, tensors = stored(save_sparse(model, tmp_path / "seed"))
    assert meta["masks"]["coding"] == "random" and "masks" not in tensors
    other, _ = sparse_model("peft-lora", method="magnitude", sparsity=0.9)
    meta, tensors = stored(save_sparse(other, tmp_path / "coded"))
    assert meta["masks"]["coding"] in ("rice", "lzma") and "masks" in tensors
    loaded = load_sparse(base_model(config), tmp_path / "seed")
    assert all(torch.equal(sa.get_masks(loaded)[n], m) for n, m in sa.get_masks(model).items())


def test_masks_that_the_seed_does_not_give_are_coded(tmp_path):
    model, config = sparse_model("peft-lora", method="random", sparsity=0.9)
    masks = sa.get_masks(model)
    name = next(iter(masks))
    changed = {**masks, name: masks[name].roll(1)}
    apply_masks(model, changed, masked_parameters(model).config)
    meta, _ = stored(save_sparse(model, tmp_path / "ckpt"))
    assert meta["masks"]["coding"] in ("rice", "lzma")
    loaded = load_sparse(base_model(config), tmp_path / "ckpt")
    assert torch.equal(sa.get_masks(loaded)[name], changed[name])


def test_a_seed_that_gives_another_mask_at_load_is_refused(tmp_path, monkeypatch):
    model, config = sparse_model("peft-lora", method="random", sparsity=0.9)
    path = save_sparse(model, tmp_path / "ckpt")
    other_generator = maskcode.random_scores

    def scores(model, params, batches, config):  # as another torch version's generator might
        return {n: s.flip(-1) for n, s in other_generator(model, params, batches, config).items()}

    monkeypatch.setattr(maskcode, "random_scores", scores)
    with pytest.raises(CheckpointError, match="random pruner's seed gives another mask"):
        load_sparse(base_model(config), path)


# --- damage -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tensor", ["masks", "scales", "values"])
def test_damaged_masks_scales_or_values_are_refused_by_the_checksum(tensor, tmp_path):
    model, config = sparse_model("peft-lora", method="magnitude", sparsity=0.9)
    path = save_sparse(model, tmp_path / "ckpt", precision="int4")
    tensors = safetensors.torch.load_file(path / WEIGHTS_FILE)
    damaged = tensors[tensor].clone()
    damaged.view(torch.uint8)[3] ^= 0x10
    tensors[tensor] = damaged
    (path / WEIGHTS_FILE).write_bytes(safetensors.torch.save(tensors))
    with pytest.raises(CheckpointError, match="fails its SHA-256 check") as err:
        load_sparse(base_model(config), path)
    assert "\n" not in str(err.value)


def test_a_damaged_value_coding_is_a_one_line_error():
    """Behind the checksum (which refuses damage first), the decoder still refuses it."""
    values = torch.where(torch.arange(4096) % 10 == 0, 1.0, 0.0)  # compresses: LZMA coding
    stored = qz.quantize(values, [4096], "int4")["values"]
    assert stored[0] == qz.LZMA
    for data in (
        bytes([7]) + bytes(stored[1:].tolist()),
        bytes(stored[: len(stored) // 2].tolist()),
    ):
        with pytest.raises(CheckpointError, match="value coding is damaged") as err:
            qz._decoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), "int4", 4096)
        assert "\n" not in str(err.value)
