"""Both mixed-precision paths of the training loop, run on CPU with the tiny model: bf16 autocast, and fp16 autocast
with the GradScaler (its skipped-step logic included). On CUDA the same code runs with device "cuda"."""
import functools

import pytest
import torch

import ff
from conftest import make_tiny
import model as mdl
from model import base_dtype, score_dtype, setup_device, weights_in


def examples(n=8):
    return [dict(id=f"x{i}", format="qa", prompt=f"What is {i} plus {i}?", target=f"It is {2 * i}.")
            for i in range(n)]


def losses(tok, precision, steps=3, **kw):
    model = make_tiny(tok)
    cfg = ff.Config(precision=precision, batch_size=4, micro_tokens=64, seed=0)
    log = ff.train(model, tok, examples(), cfg, lr=1e-3, steps=steps, **kw)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return log


def cpu_with(monkeypatch, bf16=False, amx=False, amx_fp16=False):
    """Pretend the CPU has (or lacks) each native half precision."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: amx_fp16)


@pytest.mark.parametrize("flags,native", [(dict(), ["fp32"]), (dict(bf16=True), ["fp32", "bf16"]),
                                          (dict(amx=True, amx_fp16=True), ["fp32", "bf16", "fp16"])])
def test_native_precision_detection(monkeypatch, flags, native):
    cpu_with(monkeypatch, **flags)
    assert mdl.native_cpu_precisions() == native
    monkeypatch.setattr(mdl, "CPU_AUTO", "bf16")
    auto = "bf16" if "bf16" in native else "fp32"  # auto never takes an emulated path
    assert mdl.precision_name("cpu") == auto and setup_device("cpu")[1] == mdl.AMP[auto]
    forced = setup_device("cpu", "bf16")[3]  # asked for by name: honoured, and said to be emulated where it is
    emulated = " (emulated on this CPU: slower than fp32)"
    assert forced == "autocast torch.bfloat16" + ("" if "bf16" in native else emulated)
    monkeypatch.setattr(mdl, "CPU_AUTO", "fp32")
    assert mdl.precision_name("cpu") == "fp32"


def test_this_cpus_detection_matches_its_flags():
    """On Linux the answer agrees with /proc/cpuinfo's flags."""
    import pathlib
    info = pathlib.Path("/proc/cpuinfo")
    if not info.is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = set(info.read_text().split())
    assert ("bf16" in mdl.native_cpu_precisions()) == bool({"avx512_bf16", "amx_tile"} & flags)


def test_precision_options(monkeypatch):
    cpu_with(monkeypatch, bf16=True)
    monkeypatch.setattr(mdl, "CPU_AUTO", "fp32")
    assert setup_device("cpu")[1] is None and setup_device("cpu")[3] == "fp32"
    device, amp, autocast, note = setup_device("cpu", "bf16")
    assert amp == torch.bfloat16 and note == "autocast torch.bfloat16"
    with autocast:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert setup_device("cpu", "fp16")[3] == ("autocast torch.float16 + GradScaler"
                                              " (emulated on this CPU: slower than fp32)")
    assert score_dtype("cpu", lora=False, precision="bf16") == torch.bfloat16  # bf16 runs score in bf16
    assert score_dtype("cpu", lora=False, precision="fp16") == torch.float32  # fp16 runs score in fp32
    assert score_dtype("cpu", lora=False, precision="fp32") == torch.float32
    assert base_dtype("cpu", lora=True, precision="bf16") == torch.bfloat16  # a frozen LoRA base in the autocast dtype
    assert base_dtype("cpu", lora=False, precision="bf16") == torch.float32  # trained weights stay fp32
    from common import UserError
    with pytest.raises(UserError, match="--precision"):
        setup_device("cpu", "fp8")


@pytest.mark.parametrize("precision,tol", [("bf16", 0.05), ("fp16", 0.01)])
def test_mixed_precision_loss_is_finite_and_close_to_fp32(tokenizer, precision, tol):
    ref, mixed = losses(tokenizer, "fp32"), losses(tokenizer, precision)
    for a, b in zip(ref["loss"], mixed["loss"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=tol)  # the same batches from the same initialisation
    assert ("skipped_steps" in mixed) == (precision == "fp16")  # the scaler runs for fp16 only
    assert mixed.get("skipped_steps", 0) == 0


def test_fp16_scaler_skips_an_overflowing_step(tokenizer, monkeypatch):
    """A scale of 2**40 overflows fp16's gradients: the scaler skips that step, halves its scale and carries on."""
    monkeypatch.setattr(torch.amp, "GradScaler", functools.partial(torch.amp.GradScaler, init_scale=2.0 ** 40))
    log = losses(tokenizer, "fp16", steps=4)
    assert log["skipped_steps"] >= 1 and log["steps"] == 4
    assert all(torch.isfinite(torch.tensor(x["loss"])) for x in log["loss"])


def test_weights_in_swaps_and_restores_the_master_weights(tokenizer):
    """Scoring in bf16 leaves every fp32 weight bit for bit, and the optimizer still holds the same parameters."""
    model = make_tiny(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = list(model.parameters())
    x = torch.tensor([[1, 2, 3, 4]])
    with weights_in(model, torch.bfloat16):
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())
        with torch.inference_mode():
            half = model(input_ids=x).logits.float()
    assert list(model.parameters()) == params
    assert all(p.dtype == torch.float32 and torch.equal(p, before[n]) for n, p in model.named_parameters())
    with torch.inference_mode():
        full = model(input_ids=x).logits
    assert torch.allclose(half, full, atol=0.1)  # the same model, rounded: logits within bf16's error


def test_a_bf16_scored_run_matches_fp32_scores(tokenizer):
    """ff.score in bf16 and in fp32 on the same weights: the NLL agrees within 0.05 nats/token."""
    model = make_tiny(tokenizer)
    ex = examples(4)
    s32 = ff.score(model, tokenizer, ex, ff.Config(precision="fp32"), None)
    s16 = ff.score(model, tokenizer, ex, ff.Config(precision="bf16"), None)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for k in s32:
        assert s16[k]["nll"] == pytest.approx(s32[k]["nll"], abs=0.05)
