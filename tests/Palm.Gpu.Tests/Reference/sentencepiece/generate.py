#!/usr/bin/env python3
"""Regenerates the SentencePiece reference files the tokenizer tests compare against.

Needs Debian's `sentencepiece` package (spm_train, spm_encode) and the tiny Shakespeare corpus
(../shared/data/tinyshakespeare.txt from the repository root, or pass its path as argv[1]).
Everything else is generated here from a fixed seed: code-like snippets, sentences in Greek,
Russian, Chinese, Japanese, Korean, Arabic, Hebrew, Hindi, emoji, numbers, and edge cases
(runs of spaces, tabs, CR, control characters, rare characters that need byte fallback,
invalid UTF-8).

Writes, next to this script:
  heldout.txt.gz      the held-out text (bytes; one SentencePiece input per line)
  <name>.model        small models (vocabulary 1500-2000)
  <name>.ids.gz       `spm_encode --output_format=id` of heldout.txt with that model
Run: python3 generate.py [path/to/tinyshakespeare.txt]
"""
import gzip
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SHAKESPEARE = os.path.join(HERE, "..", "..", "..", "..", "..", "shared", "data", "tinyshakespeare.txt")

# PaLM's settings: lossless, digits split, bytes for anything unknown.
PALM_FLAGS = [
    "--byte_fallback=true",
    "--split_digits=true",
    "--remove_extra_whitespaces=false",
    "--normalization_rule_name=identity",
]

MODELS = {
    "bpe": ["--model_type=bpe", "--vocab_size=2000"] + PALM_FLAGS,
    "unigram": ["--model_type=unigram", "--vocab_size=2000"] + PALM_FLAGS,
    # Whitespace-only pieces ("▁▁▁▁") let merges cross word starts; user symbols are frozen.
    "bpe_ws_user": ["--model_type=bpe", "--vocab_size=1500", "--allow_whitespace_only_pieces=true",
                    "--user_defined_symbols=<tab>,[MASK],==>,\u2192", "--character_coverage=0.995"] + PALM_FLAGS,
    "unigram_user": ["--model_type=unigram", "--vocab_size=1500", "--user_defined_symbols=<tab>,[MASK],==>,\u2192",
                     "--character_coverage=0.995"] + PALM_FLAGS,
    # SentencePiece's defaults for normalisation (nmt_nfkc, extra whitespace removed).
    "bpe_nfkc": ["--model_type=bpe", "--vocab_size=1500", "--byte_fallback=true", "--split_digits=true"],
}

GREEK = "καλημέρα κόσμε η γλώσσα είναι ζωντανή και ο ήλιος λάμπει πάνω από τη θάλασσα σήμερα αύριο φίλος".split()
RUSSIAN = "привет мир язык это жизнь и солнце светит над морем сегодня завтра друг книга город время".split()
CHINESE = ["你好", "世界", "语言", "是", "生活", "太阳", "照耀", "大海", "今天", "明天", "朋友", "书", "城市", "时间", "学习", "程序"]
JAPANESE = ["こんにちは", "世界", "言葉", "は", "生きている", "太陽", "海", "今日", "明日", "友達", "本", "東京", "カタカナ", "ひらがな"]
KOREAN = "안녕하세요 세계 언어는 살아 있습니다 태양 바다 오늘 내일 친구 책 도시".split()
ARABIC = "مرحبا بالعالم اللغة حية والشمس تشرق فوق البحر اليوم غدا صديق كتاب مدينة".split()
HEBREW = "שלום עולם השפה חיה והשמש זורחת מעל הים היום מחר חבר ספר".split()
HINDI = "नमस्ते दुनिया भाषा जीवित है और सूरज समुद्र के ऊपर चमकता है आज कल दोस्त".split()
EMOJI = ["😀", "🚀", "👍🏽", "🇫🇷", "❤️", "🎉", "👩‍💻", "🐍", "✨", "🔥"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "\u0915\u094d\u0937"]
IDENTS = ["count", "value", "index", "buffer", "tokens", "result", "logits", "grad", "weight", "name", "items", "total"]
TYPES = ["int", "float", "string", "var", "long", "bool"]


def code_snippet(rng):
    a, b = rng.sample(IDENTS, 2)
    t = rng.choice(TYPES)
    n = rng.randint(0, 99999)
    kind = rng.randrange(6)
    if kind == 0:
        return [f"public static {t} {a.capitalize()}({t} {b}, int n = {n})", "{",
                f"    for (int i = 0; i < n; i++) {b} += i * {rng.randint(2, 9)};", f"    return {b};", "}"]
    if kind == 1:
        return [f"def {a}_{b}({b}, n={n}):", f"    \"\"\"Return the {a} of {b}.\"\"\"",
                f"    if not {b}:", "        return None", f"    return sum(x * {rng.random():.4f} for x in {b}[:n])"]
    if kind == 2:
        return [f"\tif ({a} >= {n} && {b} != null) {{", f"\t\t{a} = {b}.Length; // tab-indented",
                "\t}", f"\t\t\t{a}++;"]
    if kind == 3:
        return [f"{a} = [{', '.join(str(rng.randint(-500, 500)) for _ in range(rng.randint(2, 8)))}]",
                f"print(f\"{{{a}!r}} -> {{len({a})}}\")  #   spaced   comment"]
    if kind == 4:
        return [f"        var {a} = new Dictionary<string, {t}>();  // {n}",
                f"        {a}[\"{b}\"] = {rng.randint(0, 10**9)};"]
    return [f"SELECT {a}, COUNT(*) FROM {b} WHERE id = {n} GROUP BY {a};"]


def sentence(rng, words, sep=" "):
    return sep.join(rng.choice(words) for _ in range(rng.randint(3, 12)))


def multilingual_line(rng):
    kind = rng.randrange(10)
    if kind == 0: return sentence(rng, GREEK) + "."
    if kind == 1: return sentence(rng, RUSSIAN) + "!"
    if kind == 2: return sentence(rng, CHINESE, "") + "。"
    if kind == 3: return sentence(rng, JAPANESE, "") + "。"
    if kind == 4: return sentence(rng, KOREAN) + "."
    if kind == 5: return sentence(rng, ARABIC) + "؟"
    if kind == 6: return sentence(rng, HEBREW) + "."
    if kind == 7: return sentence(rng, HINDI) + "।"
    if kind == 8: return " ".join(rng.choice(EMOJI + GREEK[:3] + ["ok", "wow"]) for _ in range(rng.randint(2, 8)))
    return f"In {rng.randint(1000, 2100)} the price was {rng.randint(0, 10**6)}.{rng.randint(0, 99):02d} € — {rng.choice(COMBINING)}"


def rare_char(rng):
    # Characters most unlikely to be in a small vocabulary: they exercise byte fallback.
    ranges = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x1F300, 0x1FAFF), (0x10000, 0x1007F), (0x20000, 0x2A6DF),
              (0xA000, 0xA48F), (0x0590, 0x05FF), (0x1D400, 0x1D7FF), (0xE000, 0xF8FF), (0xF0000, 0xF00FF)]
    lo, hi = rng.choice(ranges)
    return chr(rng.randint(lo, hi))


def edge_line(rng):
    kind = rng.randrange(9)
    if kind == 0: return " " * rng.randint(1, 12) + sentence(rng, IDENTS) + " " * rng.randint(0, 5)
    if kind == 1: return "\t".join(sentence(rng, IDENTS) for _ in range(3)) + "\t"
    if kind == 2: return sentence(rng, IDENTS) + "\r"                       # CRLF line
    if kind == 3: return "".join(rare_char(rng) for _ in range(rng.randint(1, 10)))
    if kind == 4: return "ctrl\x01\x02\x1b[0m\x7f end\x0b\x0c"
    if kind == 5: return "x" + " " * rng.randint(2, 40) + "y  <tab> [MASK] ==> a\u2192b"
    if kind == 6: return "digits " + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30))) + " ٣٤٥ １２３"
    if kind == 7: return "\u2581lit\u2581eral \ufb01 \u00bd \u2460 Ａｂｃ"    # literal ▁ and NFKC-sensitive forms
    return " ".join(rng.choice(EMOJI) + rare_char(rng) for _ in range(3))


def build(rng, shakespeare_lines, n_bytes, invalid_utf8):
    out = []
    size = 0
    while size < n_bytes:
        r = rng.random()
        if r < 0.40:
            start = rng.randrange(len(shakespeare_lines) - 12)
            lines = shakespeare_lines[start:start + rng.randint(1, 12)]
        elif r < 0.65:
            lines = code_snippet(rng)
        elif r < 0.90:
            lines = [multilingual_line(rng) for _ in range(rng.randint(1, 4))]
        else:
            lines = [edge_line(rng) for _ in range(rng.randint(1, 3))]
        for line in lines:
            b = line.encode("utf-8")
            out.append(b)
            size += len(b) + 1
        if invalid_utf8 and rng.random() < 0.01:
            out.append(b"bad \xff\xfe bytes \xc3( \xed\xa0\x80 \xf0\x9f end")
    return b"\n".join(out) + b"\n"


def main():
    shakespeare = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_SHAKESPEARE
    with open(shakespeare, encoding="utf-8") as f:
        lines = f.read().split("\n")
    cut = int(len(lines) * 0.7)
    train_lines, heldout_lines = lines[:cut], lines[cut:]
    train = build(random.Random(1234), train_lines, 600_000, invalid_utf8=False)
    heldout = build(random.Random(98765), heldout_lines, 130_000, invalid_utf8=True)

    with tempfile.TemporaryDirectory() as tmp:
        train_path = os.path.join(tmp, "train.txt")
        heldout_path = os.path.join(tmp, "heldout.txt")
        with open(train_path, "wb") as f: f.write(train)
        with open(heldout_path, "wb") as f: f.write(heldout)
        with gzip.GzipFile(os.path.join(HERE, "heldout.txt.gz"), "wb", mtime=0) as f: f.write(heldout)
        for name, flags in MODELS.items():
            prefix = os.path.join(tmp, name)
            subprocess.run(["spm_train", f"--input={train_path}", f"--model_prefix={prefix}", "--num_threads=2",
                            "--random_seed=7", "--minloglevel=2"] + flags, check=True)
            with open(prefix + ".model", "rb") as f: model = f.read()
            with open(os.path.join(HERE, name + ".model"), "wb") as f: f.write(model)
            ids = subprocess.run(["spm_encode", f"--model={prefix}.model", "--output_format=id"],
                                 input=heldout, stdout=subprocess.PIPE, check=True).stdout
            with gzip.GzipFile(os.path.join(HERE, name + ".ids.gz"), "wb", mtime=0) as f: f.write(ids)
            print(f"{name}: {len(model)} byte model, {len(ids.split())} ids for {len(heldout)} bytes")


if __name__ == "__main__":
    main()
