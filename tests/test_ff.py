"""The algorithm's parts on a tiny random Llama: scoring, NLL, the training loop, LoRA."""
from pathlib import Path

import pytest
import torch

import metrics
import ff
import model as mdl
import common
from conftest import make_tiny
from data import render

EXAMPLES = [
    dict(id="a", kind="unsafe", format="text", prompt="You are a", target=" bad bad person, I said so."),
    dict(id="b", kind="safe", format="text", prompt="The weather today", target=" is sunny with a light breeze."),
    dict(id="c", kind="task", format="qa", prompt="What is the capital of France?", target="Paris"),
    dict(id="d", kind="task", format="qa", prompt="Name a colour of the sky on a clear day, in one word.",
         target="Blue"),
    dict(id="e", kind="unsafe", format="text", prompt="Shut up you", target=" idiot."),
]


def test_early_stopped_batched_generation_equals_unbatched_full_length(tokenizer):
    """Batched, left-padded, early-stopped greedy decoding must give exactly the first lines that one-at-a-time
    HF generate() gives when run to the same token cap with no stop."""
    model = make_tiny(tokenizer, newline_bias=50.0)
    prompts = [render(e) for e in EXAMPLES] * 3
    caps = [12, 30, 7] * 5
    fast = mdl.generate(model, tokenizer, prompts, caps, batch_size=4)
    n_stopped_early = 0
    for p, cap, g in zip(prompts, caps, fast):
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cap, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
        full = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert metrics.first_line(g) == metrics.first_line(full)
        assert metrics.rouge1("reference words", g) == metrics.rouge1("reference words", full)
        n_stopped_early += len(g) < len(full)
    assert n_stopped_early > 0  # the early stop was exercised


def test_target_nll_batched_equals_single(tokenizer):
    model = make_tiny(tokenizer)
    cfg = ff.Config()
    batched = mdl.target_nll(model, tokenizer, EXAMPLES, cfg, batch_size=5)
    single = [mdl.target_nll(model, tokenizer, [e], cfg, batch_size=1)[0] for e in EXAMPLES]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    # hand check for one example: mean of -log p over exactly the target's tokens
    ids, n_prompt = mdl.encode(tokenizer, EXAMPLES[2], cfg.max_len)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    want = -torch.stack([logp[i - 1, ids[i]] for i in range(n_prompt, len(ids) - 1)]).mean()
    assert abs(batched[2] - want.item()) < 1e-4


def test_generation_reads_the_target_nll_off_the_prompt_cache(tokenizer):
    """score()'s NLL comes from generate(): the targets run on top of the left-padded prompts' KV cache. It must
    equal the plain one-pass target_nll, also where encode() truncates, and leave the generations unchanged."""
    model = make_tiny(tokenizer, newline_bias=50.0)
    examples = EXAMPLES * 4  # a batch of more than 8 rows: the cross-entropy runs 8 rows at a time
    for max_len, batch_size in ((256, 3), (12, 3), (256, len(examples))):  # 12 cuts some targets short
        cfg = ff.Config(max_len=max_len)
        prompts = [render(e) for e in examples]
        gens, nll = mdl.generate(model, tokenizer, prompts, 9, batch_size=batch_size,
                                targets=[mdl.target_ids(tokenizer, e, max_len) for e in examples])
        assert gens == mdl.generate(model, tokenizer, prompts, 9, batch_size=3)
        assert torch.allclose(torch.tensor(nll), torch.tensor(mdl.target_nll(model, tokenizer, examples, cfg)),
                              atol=1e-4, equal_nan=True)


def test_encode_prompt_is_the_generation_prompt(tokenizer):
    ids, n_prompt = mdl.encode(tokenizer, EXAMPLES[2], 256)
    assert ids[:n_prompt] == tokenizer(render(EXAMPLES[2]), add_special_tokens=False).input_ids
    assert ids[-1] == tokenizer.eos_token_id


def test_training_loop_lowers_the_loss(tokenizer):
    model = make_tiny(tokenizer)
    cfg = ff.Config(batch_size=4, micro_tokens=24)  # several passes accumulated per step
    before = sum(mdl.target_nll(model, tokenizer, EXAMPLES, cfg))
    log = ff.train(model, tokenizer, EXAMPLES * 4, cfg, lr=3e-3, steps=15)
    after = sum(mdl.target_nll(model, tokenizer, EXAMPLES, cfg))
    assert after < before - 1.0
    assert log["loss"][-1]["loss"] < log["loss"][0]["loss"]
    assert log["loss"][-1]["lr"] < log["loss"][0]["lr"]  # the linear schedule decays


def test_token_budget_split_by_hand():
    lengths = [5, 9, 3, 9, 4]
    # longest first; a pass holds rows x its longest row <= budget; a row over the budget runs alone
    assert mdl.token_budget_split([0, 1, 2, 3, 4], lengths, 18) == [[1, 3], [0, 4, 2]]
    assert mdl.token_budget_split([0, 1, 2, 3, 4], lengths, 8) == [[1], [3], [0], [4, 2]]
    assert mdl.token_budget_split([0, 2], lengths, 1000) == [[0, 2]]


def test_one_step_is_the_same_however_the_batch_is_split(tokenizer):
    """The loss is the mean over every predicted token of the optimizer batch, so splitting the batch into more
    forward passes (a smaller --micro-tokens) must give the same loss and the same accumulated gradient."""
    losses, grads = [], []
    for budget in (10_000, 1):  # one pass of 5 rows; five passes of one row
        model = make_tiny(tokenizer)
        w = model.model.layers[0].mlp.up_proj.weight
        seen = []
        w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))  # the last is the full sum
        log = ff.train(model, tokenizer, EXAMPLES, ff.Config(batch_size=5, micro_tokens=budget), lr=1e-2, steps=1)
        losses.append(log["loss"][0]["loss"])
        grads.append(seen[-1])
    assert abs(losses[0] - losses[1]) < 1e-4
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def make_tiny_gpt2(tok, seed=0):
    """A GPT-2-shaped tiny model: its attention is one fused Conv1D (c_attn), whose weight is (in, out)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).eval()


@pytest.mark.parametrize("shape", ["llama", "gpt2"])
def test_lora_trains_adapters_only_and_merges_exactly(tokenizer, tmp_path, shape):
    model = make_tiny(tokenizer) if shape == "llama" else make_tiny_gpt2(tokenizer)
    cfg = ff.Config(lora=True, batch_size=4, lora_dropout=0.0)
    frozen = {n: p.clone() for n, p in model.named_parameters()}
    model.save_pretrained(tmp_path / "base")  # M0 on disk: a LoRA checkpoint names the model it applies to
    tokenizer.save_pretrained(tmp_path / "base")
    model = mdl.add_lora(model, cfg)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert {n.split(".")[-4] for n in trained} == ({"q_proj", "v_proj"} if shape == "llama" else {"c_attn"})
    before = sum(mdl.target_nll(model, tokenizer, EXAMPLES, cfg))
    ff.train(model, tokenizer, EXAMPLES * 4, cfg, lr=1e-2, steps=10)
    assert sum(mdl.target_nll(model, tokenizer, EXAMPLES, cfg)) < before
    base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in model.named_parameters()
            if "lora_" not in n}
    assert all(torch.equal(base[n], p) for n, p in frozen.items())  # the base never moved
    ids = torch.tensor([mdl.encode(tokenizer, EXAMPLES[0], 64)[0]])
    model.eval()
    with torch.no_grad():
        want = model(ids).logits
        mdl.save_checkpoint(model, tokenizer, tmp_path / "m", base=tmp_path / "base")  # the adapter only
        assert mdl.checkpoint_bytes(tmp_path / "m") < mdl.checkpoint_bytes(tmp_path / "base") / 2
        assert not (tmp_path / "m/model.safetensors").exists()
        plain, _ = mdl.load_model(str(tmp_path / "m"))  # the base with the adapter merged on load
        assert not any("lora" in n for n, _ in plain.named_parameters())
        assert torch.allclose(plain(ids).logits, want, atol=1e-4)
        assert torch.equal(model(ids).logits, want)  # saving left the adapters in place
    # a chain, as the rounds build it: a second adapter on the first checkpoint, its base named relative
    second = mdl.add_lora(plain, cfg)
    ff.train(second, tokenizer, EXAMPLES * 2, cfg, lr=1e-2, steps=3)
    second.eval()
    mdl.save_checkpoint(second, tokenizer, tmp_path / "m2", base=tmp_path / "m")
    assert "../m" in (tmp_path / "m2" / mdl.ADAPTER_BASE).read_text()
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("m", "m2", "base"):  # moved together: the relative base still resolves
        (tmp_path / name).rename(moved / name)
    with torch.no_grad():
        assert torch.allclose(mdl.load_model(str(moved / "m2"))[0](ids).logits, second(ids).logits, atol=1e-4)


def test_base_dtype_follows_the_autocast_dtype(monkeypatch):
    """A frozen LoRA base is stored in the autocast dtype: bf16, or fp16 where the GPU has no bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for bf16, want in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        assert mdl.setup_device("cuda")[1] == want and mdl.base_dtype("cuda", lora=True) == want
        assert mdl.base_dtype("cuda", lora=False) == torch.float32  # trained weights stay fp32 under autocast
    assert mdl.base_dtype("cpu", lora=True) == torch.float32


class BosTokenizer:
    """The embedded tokenizer, made to follow a Llama-2-like convention: it adds BOS unless told not to."""
    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        if name.startswith("_ff"):  # ff's per-tokenizer caches belong to this tokenizer, not the wrapped one
            raise AttributeError(name)
        return getattr(self._tok, name)

    def __len__(self):
        return len(self._tok)

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = self._tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            enc["input_ids"] = [self._tok.bos_token_id] + enc["input_ids"]
        return enc


def test_prompts_follow_the_tokenizers_bos_convention(tokenizer):
    ex = EXAMPLES[2]
    plain = tokenizer(render(ex), add_special_tokens=False).input_ids
    assert not mdl.adds_bos(tokenizer) and mdl.encode(tokenizer, ex, 256)[0][:len(plain)] == plain  # SmolLM2: none
    bos = BosTokenizer(tokenizer)
    ids, n_prompt = mdl.encode(bos, ex, 256)
    assert mdl.adds_bos(bos) and ids[:n_prompt] == [tokenizer.bos_token_id] + plain
    assert ids[n_prompt:] == tokenizer(ex["target"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert mdl.prompt_ids(bos, render(ex)) == ids[:n_prompt]  # generation sees exactly the training prefix


def test_filter_metrics_and_rows(tokenizer):
    phis = dict(rouge=0.1, nll=0.5)
    s = lambda r, n: {e["id"]: dict(gen="", rouge=r, nll=n) for e in EXAMPLES}  # noqa: E731
    s_t = {"10": {**s(0.5, 2.0), "a": dict(gen="", rouge=0.1, nll=3.0)}}
    rows = ff.flag_rows(ff.forgetting_rows(EXAMPLES, s(0.2, 1.0), s(0.6, 1.0), s_t, {}, ["10"]), phis, ["rouge", "nll"],
                        10)
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["forget_rouge"]["10"] == 0.5 and by_id["a"]["forget_nll"]["10"] == 2.0
    assert by_id["a"]["flagged"] == {"rouge": True, "nll": True}
    assert by_id["b"]["flagged"] == {"rouge": False, "nll": True}  # ROUGE 0.1 > 0.1 is false: the rule is strict
    m = metrics.filter_metrics(rows, phis, 10)
    assert m["signals"]["rouge"]["at_threshold"]["flagged"] == {"unsafe": 1, "safe": 0, "task": 0}
    assert m["signals"]["rouge"]["at_threshold"]["precision"] == 100.0
    assert m["signals"]["rouge"]["at_threshold"]["recall"] == 50.0
    assert m["fit"]["unsafe"]["m1"]["rouge"] == 0.6


def test_hub_ids_with_and_without_an_organisation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert mdl.model_path("gpt2") == "gpt2" and mdl.model_path("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    (tmp_path / "gpt2").mkdir()
    assert mdl.model_path("gpt2") == Path("gpt2")  # a local folder wins over the hub id of the same name
    for missing in ("./gpt2-xl", "/no/such/model", "a/b/c"):
        with pytest.raises(common.UserError, match="no such folder"):
            mdl.model_path(missing)


def test_signals_auto_is_the_studys_choice_on_own_data_and_the_papers_otherwise():
    own, paper = ff.Config(noisy="mine.jsonl"), ff.Config()
    ff.check_config(own), ff.check_config(paper)
    assert own.signals == ["rank", "nll"] and paper.signals == ["rouge", "nll"]


def test_forget_rank_is_the_mean_rank_of_both_signals():
    noisy = [dict(id=str(i), kind=None) for i in range(3)]
    s1 = {str(i): dict(rouge=1.0, nll=1.0) for i in range(3)}
    st = {"5": {"0": dict(rouge=1.0, nll=1.1), "1": dict(rouge=0.5, nll=1.3), "2": dict(rouge=0.0, nll=1.2)}}
    rows = ff.forgetting_rows(noisy, s1, s1, st, {}, ["5"], ranked=True)
    # rouge forgetting 0, 0.5, 1 -> ranks 0, 0.5, 1; nll 0.1, 0.3, 0.2 -> ranks 0, 1, 0.5; mean 0, 0.75, 0.75
    assert [r["forget_rank"]["5"] for r in rows] == [0.0, 0.75, 0.75]
    assert "forget_rank" not in ff.forgetting_rows(noisy, s1, s1, st, {}, ["5"])[0]
