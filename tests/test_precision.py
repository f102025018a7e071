"""Both mixed-precision paths of the training loop, run on CPU with the tiny model: bf16 autocast, and fp16 autocast
with the GradScaler (its skipped-step logic included). On CUDA the same code runs with device "cuda"."""
import functools

import pytest
import torch

import ff
from conftest import make_tiny
from model import base_dtype, setup_device


def examples(n=8):
    return [dict(id=f"x{i}", format="qa", prompt=f"What is {i} plus {i}?", target=f"It is {2 * i}.")
            for i in range(n)]


def losses(tok, precision, steps=3, **kw):
    model = make_tiny(tok)
    cfg = ff.Config(precision=precision, batch_size=4, micro_tokens=64, seed=0)
    log = ff.train(model, tok, examples(), cfg, lr=1e-3, steps=steps, **kw)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return log


def test_precision_options():
    assert setup_device("cpu")[1] is None and setup_device("cpu")[3] == "fp32 (no autocast on CPU)"
    device, amp, autocast, note = setup_device("cpu", "bf16")
    assert amp == torch.bfloat16 and note == "autocast torch.bfloat16"
    with autocast:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert setup_device("cpu", "fp16")[3] == "autocast torch.float16 + GradScaler"
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
