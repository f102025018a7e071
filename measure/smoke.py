"""The GPU check: the whole chain (data, M1, M2 with scores, the filter, FF, evaluation) on a randomly initialised
model of the GPU preset's architecture, offline, at small N; then what it cost: training tokens/s and MFU against
the device's measured bf16 matmul peak, scoring throughput, peak memory.

    python measure/smoke.py                  # CUDA: SmolLM2-1.7B's architecture, the preset's options; CPU: tiny
    python measure/smoke.py --arch tiny --device cpu  # what the tests run

Nothing is downloaded: the weights are random (the numbers measure speed, not safety) and the tokenizer is the
embedded model's (SmolLM2's, shared by the family), or --tokenizer <folder>. Writes <out>/ (the run folder) and
--json (default results/smoke_<device>.json).
"""
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tool (common, data, ff, ...) is one level up
import data
import eval as ev
import ff
from bench import matmul_peak
from common import DEVICES, GPU_PRESET, UserError, main_guard, opt, parse_config, preset, write_json
from model import EMBEDDED, checkpoint_bytes, hardware, load_tokenizer, model_config, setup, weight_bytes

# SmolLM2-1.7B-Instruct's config.json (the GPU preset's model), and a tiny model of the same family for CPU.
ARCHS = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
}
# run.sh's GPU preset options for ff.py (common.GPU_PRESET: LoRA, lr, batch), then this check's own epochs and caps
# after them (the last value of an option wins), so that it stays short.
PRESET = GPU_PRESET["ff"]
DATASHEET_BF16 = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 TFLOP/s, NVIDIA's data sheets (SXM)


@dataclass
class Config:
    arch: str = opt("auto", "model architecture: smollm2-1.7b (the GPU preset's), tiny, or auto (1.7B on CUDA, "
                            "tiny on CPU)", choices=("auto", "smollm2-1.7b", "tiny"))
    n: int = opt(128, "N, the noisy set's size", lo=1)
    steps: list = opt([4, 8], "t: safety steps scored", lo=1)
    epochs: int = opt(1, "epochs for M1 and FF", lo=1)
    max_new_tokens: int = opt(24, "generation cap of scoring and evaluation (random weights never stop early)", lo=1)
    tokenizer: str = opt("", "tokenizer folder (default: the embedded model's)")
    out: str = opt("runs/smoke", "run folder")
    json: str = opt("", "where the measurements go (default: results/smoke_<device>.json)")
    device: str = opt("auto", "auto, cpu or cuda", choices=DEVICES)


def call(module, *args):
    """`python <module>.py <args>` in this process (no interpreter start-up per stage)."""
    with mock.patch.object(sys, "argv", [f"{module.__name__}.py", *map(str, args)]):
        module.main()


def random_model(cfg, device, out):
    """A randomly initialised causal LM of the chosen architecture, saved with its tokenizer as a checkpoint folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer) if cfg.tokenizer else load_tokenizer(EMBEDDED)
    arch = cfg.arch if cfg.arch != "auto" else "smollm2-1.7b" if device == "cuda" else "tiny"
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **ARCHS[arch]))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return arch, sum(p.numel() for p in model.parameters())


def main():
    cfg = parse_config(Config, __doc__)
    device, _, _, note = setup(cfg.device)
    run, t0 = Path(cfg.out), time.time()
    if (run / ".smoke").is_file():  # an earlier check's folder: measure afresh, never skip its stages
        shutil.rmtree(run)
    elif run.exists() and any(run.iterdir()):
        raise UserError(f"--out {run}: not empty and not an earlier smoke check's folder; pass a new folder")
    run.mkdir(parents=True, exist_ok=True)
    (run / ".smoke").write_text("")
    arch, params = random_model(cfg, device, run / "model")
    gpu = device == "cuda"
    caps = ["--max-new-tokens-text", cfg.max_new_tokens, "--max-new-tokens-qa", cfg.max_new_tokens]
    call(data, "--concept", "toxicity", "--n", cfg.n, "--n-safety", 2 * max(cfg.steps) * 8, "--n-eval", 32,
         "--out", run)
    call(ff, "--run", run, "--model", run / "model", "--safety-steps", *cfg.steps,
         "--phi", "0.1", "--phi-nll", "0.5", "--no-control", "--baselines", "none", "--device", device,
         *(PRESET if gpu else []), "--epochs", cfg.epochs, *caps)
    call(ev, "--run", run, "--scorer", "profanity-check", "--no-self-correct", "--max-new-tokens", cfg.max_new_tokens,
         "--device", device, *(["--gen-batch-size", preset("eval", "--gen-batch-size")] if gpu else []))
    filt = json.loads((run / "filter.json").read_text())
    evals = json.loads((run / "eval.json").read_text())
    # optimizer steps only: the scores at t apart, and each training's first step (its warm-up) left out
    tokens = sum(t["tokens"] - t["warmup"]["tokens"] for t in filt["train"].values())
    train_s = sum(t["train_s"] - t["warmup"]["s"] for t in filt["train"].values())
    lora = gpu  # the preset trains LoRA on CUDA: no weight gradients, ~4 FLOPs per parameter and token, else 6
    peak = matmul_peak(device, torch.bfloat16 if gpu else torch.float32)
    tok_s = tokens / train_s
    score_s = filt["timings_s"]["M0 scores and control"]  # --no-control: one scoring pass of D_noisy (and a load)
    out = dict(
        device=device, hardware=hardware(), torch=torch.__version__, precision=note, arch=arch, params=params,
        n=cfg.n, steps=cfg.steps, max_new_tokens=cfg.max_new_tokens, wall_s=round(time.time() - t0, 1),
        train=dict(tokens=tokens, wall_s=round(train_s, 1), tokens_per_s=round(tok_s, 1),
                   flops_per_token=(4 if lora else 6) * params, by_stage=filt["train"]),
        matmul_peak_tflop_s=round(peak / 1e12, 3), peak_dtype="bf16" if gpu else "fp32",
        mfu=round((4 if lora else 6) * params * tok_s / peak, 4),
        # the basis of measure/cost.py's --mfu: the GPU's data-sheet bf16 dense peak, where this GPU is in it
        mfu_of_datasheet=next((round((4 if lora else 6) * params * tok_s / (tf * 1e12), 4)
                               for name, tf in DATASHEET_BF16.items() if gpu and name in hardware()), None),
        scoring=dict(examples=cfg.n, wall_s=score_s, examples_per_s=round(cfg.n / score_s, 2),
                     max_new_tokens=cfg.max_new_tokens),
        stages_s=filt["timings_s"], eval_s=evals["wall_s"],
        # bytes written: the checkpoints (LoRA on CUDA: adapters) against weight_bytes, the rest (rows, stages)
        disk_bytes=dict(checkpoints=checkpoint_bytes(run / "ckpt"), per_checkpoint_formula=weight_bytes(
            model_config(str(run / "model")), 8 if lora else 0), run=checkpoint_bytes(run) - checkpoint_bytes(
            run / "model")),
        peak_memory_gib=dict(ff=filt["peak_memory_gib"], eval=evals["peak_memory_gib"],
                             gpu_allocated=round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None))
    path = Path(cfg.json or f"results/smoke_{device}.json")
    write_json(path, out)
    print(f"smoke: {arch} ({params / 1e6:.0f}M params) on {out['hardware']}, {out['wall_s']:.0f} s end to end | "
          f"training {tok_s:.0f} tokens/s, MFU {100 * out['mfu']:.1f} % of {out['matmul_peak_tflop_s']} TFLOP/s | "
          f"scoring {out['scoring']['examples_per_s']} examples/s | peak memory {out['peak_memory_gib']} -> {path}")


if __name__ == "__main__":
    main_guard(main)
