"""Write the real CLIP BPE vocabulary as a Hugging Face `CLIPTokenizer` folder.

The CLIP vocabulary (49,408 tokens: 256 byte symbols, their end-of-word forms, 48,894 merges
and two special tokens) ships with `open-clip-torch` as one gzipped merges file. Model hubs are
out of reach in tests and on offline machines, so this module turns that file into the
`vocab.json` / `merges.txt` pair that `transformers.CLIPTokenizer.from_pretrained` reads.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """The reversible byte -> printable character table byte-level BPE works on.

    Printable Latin-1 bytes stand for themselves; the rest are shifted above 255 so that no
    symbol is whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    # CLIP's vocabulary lists the printable bytes first, then the shifted ones.
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def open_clip_vocab_file() -> Path:
    """Locate `bpe_simple_vocab_16e6.txt.gz` inside an installed `open-clip-torch`.

    The package is found without importing it (importing it needs torchvision).
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the CLIP vocabulary comes from the package 'open-clip-torch'; install it with "
            "`pip install --no-deps open-clip-torch` (its own dependencies are not needed)"
        )
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open-clip-torch is installed but {path} is missing")
    return path


def clip_merges(bpe_file: Path | None = None) -> list[tuple[str, str]]:
    lines = gzip.open(bpe_file or open_clip_vocab_file()).read().decode("utf-8").split("\n")
    # The first line is a version header; the merges used by CLIP are the next N_MERGES lines.
    return [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]


def write_clip_tokenizer(folder: str | Path, *, model_max_length: int = 77) -> Path:
    """Write `vocab.json`, `merges.txt` and the tokenizer config CLIPTokenizer loads.

    `model_max_length` is the padded prompt length; small models may use fewer than CLIP's 77.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = clip_merges()
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += [START_TOKEN, END_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return folder
