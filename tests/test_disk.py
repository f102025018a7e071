"""The disk budget: a checkpoint's bytes from its architecture (weight_bytes) against what save_checkpoint writes, for
full and LoRA models of three families; ff.py refusing, before any work, a run whose disk is too small."""
import shutil

import pytest
import torch

import ff
import model as mdl
from common import main_guard
from conftest import ROOT


def tiny(kind, vocab):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128))
    cls, cfg = (LlamaForCausalLM, LlamaConfig) if kind == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    return cls(cfg(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4 if kind == "llama" else 1, tie_word_embeddings=kind == "llama"))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_weight_bytes_is_what_a_checkpoint_saves(kind, tokenizer, tmp_path):
    model = tiny(kind, len(tokenizer))
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    header = 64 * 1024  # safetensors' JSON header: the tensor names and shapes
    saved = (tmp_path / "base/model.safetensors").stat().st_size
    assert 0 <= saved - mdl.weight_bytes(model.config) < header
    lora = mdl.add_lora(model, ff.Config(lora=True))
    mdl.save_checkpoint(lora, tokenizer, tmp_path / "lora", base=tmp_path / "base")
    saved = (tmp_path / "lora/adapter_model.safetensors").stat().st_size
    assert 0 < saved - mdl.weight_bytes(model.config, lora_r=8) < header
    tok = mdl.tokenizer_bytes(tokenizer)
    assert mdl.checkpoint_bytes(tmp_path / "lora") - saved - tok < header  # the rest: configs


def test_ff_refuses_a_run_its_disk_cannot_hold(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    run = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["ff.py", "--run", str(run), "--noisy", str(ROOT / "examples/noisy.jsonl"),
                                     "--safe", str(ROOT / "examples/safe.jsonl"), "--model", str(tiny_dir)])
    with pytest.raises(SystemExit) as e:
        main_guard(ff.main)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "GiB free; free some space, or pass --run on a larger disk" in err[0]
    assert not (run / "stages").exists() and not (run / "ckpt").exists()  # refused before the first stage
