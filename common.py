"""What every script shares and none of it is the algorithm: one-line errors, the Config -> argparse glue, JSON I/O
with atomic writes, resumable stages, and the process's memory (glibc's allocator, peak resident size)."""
import argparse
import ctypes
import dataclasses
import gc
import hashlib
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import field
from pathlib import Path


# ---------------------------------------------------------------------------------------------------------------
# Errors and options.

# The GPU preset, per script: run.sh passes these on CUDA; measure/smoke.py runs the chain with them and
# measure/cost.py projects their cost. SmolLM2-1.7B-Instruct with the paper's LoRA (r 8, alpha 16, q_proj/v_proj),
# lr 2e-4, batch 32; FF_MODEL=<hub id> bash run.sh swaps the model (Qwen/Qwen2.5-7B-Instruct: the 7B preset).
DEVICES = ("auto", "cpu", "cuda")  # --device of every script
GPU_MODEL = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
GPU_PRESET = {
    "data": ["--n", "1000", "--n-safety", "500", "--n-eval", "300"],
    "ff": ["--lora", "--lr", "2e-4", "--safety-lr", "2e-4", "--epochs", "3", "--batch-size", "32", "--micro-tokens",
           "8192", "--gen-batch-size", "64", "--max-new-tokens-text", "64", "--max-new-tokens-qa", "96"],
    "eval": ["--gen-batch-size", "64", "--max-new-tokens", "64"],
}


def preset(script, option):
    """The GPU preset's value of one option (`preset("ff", "--epochs")` -> "3")."""
    args = GPU_PRESET[script]
    return args[args.index(option) + 1]


class UserError(Exception):
    """A problem with the user's input or options: reported as one line, exit status 2."""


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def main_guard(fn):
    """Run `fn`, turning UserError into one line on stderr and exit status 2 (no traceback)."""
    try:
        fn()
    except UserError as e:
        die(str(e))


def opt(default, help, lo=None, hi=None, gt=None, lt=None, choices=None):
    """A Config field with its --help text and the values it accepts: lo <= x <= hi, gt < x < lt (numbers, or each
    element of a list), or one of `choices`. parse_config enforces them; tests/test_options.py tries a value outside
    each, so every numeric option must declare its range. Lists become `nargs='+'`."""
    meta = dict(help=help, lo=lo, hi=hi, gt=gt, lt=lt, choices=choices)
    return field(default_factory=lambda: list(default), metadata=meta) if isinstance(default, list) \
        else field(default=default, metadata=meta)


def check_option(f, value):
    """Raise UserError (one line) if `value` is outside what field f declares."""
    m, flag = f.metadata, "--" + f.name.replace("_", "-")
    for x in value if isinstance(value, list) else [value]:
        if m.get("choices") is not None and x not in m["choices"]:
            raise UserError(f"{flag} {x}: choose one of {', '.join(map(str, m['choices']))}")
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            if x != x or x in (float("inf"), float("-inf")):
                raise UserError(f"{flag} {x}: must be a finite number")
            for bound, bad, words in (("lo", lambda b: x < b, "at least"), ("hi", lambda b: x > b, "at most"),
                                      ("gt", lambda b: x <= b, "above"), ("lt", lambda b: x >= b, "below")):
                if m.get(bound) is not None and bad(m[bound]):
                    raise UserError(f"{flag} {x}: must be {words} {m[bound]}")


def parse_config(cls, doc, argv=None):
    """Build argparse from a Config dataclass: every field is a --flag with its default and help shown; every value
    is checked against the field's declared range or choices (one line, exit 2, before any work)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kw = dict(default=default, help=f.metadata.get("help", "") + f" (default: {default})")
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw.update(nargs="+", type=type(default[0]))
        else:
            kw["type"] = type(default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kw)
    cfg = cls(**vars(p.parse_args(argv)))
    for f in dataclasses.fields(cls):
        check_option(f, getattr(cfg, f.name))
    return cfg



# ---------------------------------------------------------------------------------------------------------------
# JSON I/O. Every problem with an input file names the file and line; every write goes through a temporary file in
# the same folder and a rename, so no reader (and no crash) ever sees half a file.


def run_on(summary):
    """(precision, processor) a run's summary.json records: ("bf16", "Intel Xeon Processor") from its precision note
    ("autocast torch.bfloat16", "fp32", ...) and its hardware line ("CPU Intel(R) Xeon(R) Processor, 2 cores, ...")."""
    note = summary.get("precision", "fp32")
    precision = "bf16" if "bfloat16" in note else "fp16" if "float16" in note else "fp32"
    return precision, summary["hardware"].split(",")[0].removeprefix("CPU ").replace("(R)", "")

def read_jsonl(path, required=("prompt", "target"), keep_lines=False):
    """One JSON object per line; blank lines are skipped. Every problem names the file and line. keep_lines: also
    return each row's line exactly as read (the filtered set is written back byte for byte) and its line number."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (check the path, or run `python data.py` to build it)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte {e.start}: {raw[e.start]:#04x}); "
                        "save the file as UTF-8") from None
    rows, lines, numbers = [], [], []
    for i, line in enumerate(io.StringIO(text, newline=""), 1):  # splits lines exactly as open(newline="") does
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: malformed JSON ({e.msg}); each line must be one JSON object")
        if not isinstance(row, dict):
            raise UserError(f"{path}:{i}: expected a JSON object per line, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{i}: missing field {missing[0]!r}; every line needs {', '.join(required)}")
        bad = [k for k in ("prompt", "target") if k in required and not isinstance(row[k], str)]
        if bad:
            raise UserError(f"{path}:{i}: field {bad[0]!r} must be a string, got {type(row[bad[0]]).__name__}")
        if "target" in required and not row["target"].strip():
            raise UserError(f"{path}:{i}: empty target; every example needs a target to learn and to score")
        rows.append(row)
        lines.append(line if line.endswith("\n") else line + "\n")
        numbers.append(i)
    if not rows:
        raise UserError(f"{path}: no examples in file; give at least one JSON line")
    return (rows, lines, numbers) if keep_lines else rows


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (run the earlier stage first: see run.sh)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_text(path, text):
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_block(doc, text, name):
    """Replace what lies between `<!-- results:<name>:begin -->` and `<!-- results:<name>:end -->` in the Markdown
    file doc (RESULTS.md, PERFORMANCE.md, README.md) with text: the generated part of a document, nothing else."""
    begin, end = f"<!-- results:{name}:begin -->", f"<!-- results:{name}:end -->"
    body = Path(doc).read_text(encoding="utf-8")
    if begin not in body or end not in body:
        raise UserError(f"{doc}: no {begin} ... {end} markers; add them where the block belongs")
    head, rest = body.split(begin, 1)
    write_text(doc, head + begin + "\n" + text + end + rest.split(end, 1)[1])


def _dumps(path, obj, **kw):
    """JSON without NaN or infinity: such a number in a row is a bug upstream, and JSON readers disagree on it."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, **kw)
    except ValueError:
        raise ValueError(f"{path}: a NaN or infinite number in what was to be written; nothing written") from None


def write_json(path, obj):
    write_text(path, _dumps(path, obj, indent=2) + "\n")


def write_jsonl(path, rows):
    write_text(path, "".join(_dumps(path, r) + "\n" for r in rows))



def git_commit():
    """The commit of the code in this folder (short hash, '+changes' when a tracked .py or .sh file differs from it),
    or None outside a git checkout: every summary names the code that produced it."""
    import subprocess
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "*.py", "*.sh"], cwd=here).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if changed else "")


# ---------------------------------------------------------------------------------------------------------------
# Resumable stages: each long stage writes run/stages/<name>.json with the configuration that produced it.

def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def check_writable(run):
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--run {run}: cannot write there ({e.strerror}); pass a folder you can write to") from None


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
# Memory of this process.

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
    import torch  # loaded already by whoever trained or scored: data.py never pays for it
    status = Path("/proc/self/status")
    hwm = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")] \
        if status.is_file() else []
    rss = int(hwm[0]) / 2**20 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB
    return round(max(rss, torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0), 2)

