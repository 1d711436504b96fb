#!/usr/bin/env python3
"""Train tiny SentencePiece BPE models and record what the sentencepiece library does with them.

Output: tests/fixtures/spm/<variant>/{tokenizer.model, golden.json} (relative to the repository root, or OUT_DIR).

    ~/.cache/strata-venv-ref/bin/python scripts/make-spm-fixtures.py [OUT_DIR]

Needs `sentencepiece` (0.2.1 made the committed files) in the reference venv (see scripts/make-tiny-fixtures.py):

    ~/.cache/strata-venv-ref/bin/pip install sentencepiece==0.2.1 protobuf

The remote-code families (InternLM2, Baichuan 2, ChatGLM 3) ship a SentencePiece BPE `tokenizer.model` and no
tokenizer.json; their Python tokenizers call `sp_model.encode(text, out_type=str)` and map the pieces to ids.
`prep` converts such a model into tokenizer.json (prep/src/spm.rs). These fixtures are real SentencePiece models
trained here on a deterministic synthetic corpus, in the two normalizer set-ups the families use:

- `llama-like`: identity normalization, add_dummy_prefix true, remove_extra_whitespaces false, byte_fallback true,
  user-defined symbols `<|im_start|>`, `<|im_end|>` (the Llama / InternLM2 / Baichuan 2 style);
- `nfkc`: nmt_nfkc normalization (a precompiled charsmap), remove_extra_whitespaces true, add_dummy_prefix true,
  byte_fallback true (SentencePiece's defaults);
- `identity-no-prefix`: identity normalization, add_dummy_prefix false, remove_extra_whitespaces true (the
  whitespace rules without a charsmap).

The reference is what those Python tokenizers do, run here through transformers: a `PreTrainedTokenizer` subclass
with the families' methods (InternLM2Tokenizer and BaichuanTokenizer share them: `_tokenize` is
`sp_model.encode(text, out_type=str)`, ids are `piece_to_id`, `convert_tokens_to_string` is `sp_model.decode`,
`<s>` is put first when `add_bos_token`). transformers splits the text on the registered tokens (`<unk>`, `<s>`,
`</s>` and the tokenizer_config's added tokens, here `<|im_start|>`, `<|im_end|>`) and runs SentencePiece on each
piece between them, so each piece gets SentencePiece's dummy prefix. golden.json holds, for each test string, the ids
and tokens of `tokenizer.encode(text, add_special_tokens=False)` and of `add_special_tokens=True`, the text
`tokenizer.decode(ids, skip_special_tokens=True)` gives back, and, for comparison, what SentencePiece alone gives for the whole string
(`sp_ids`; it differs where a registered token is in the text). tokenizer_config.json is written beside the model.
The training is deterministic (one thread, no shuffling, fixed corpus).
"""

import json
import os
import random
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
import transformers
from transformers import AddedToken, PreTrainedTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures" / "spm"

WORDS = ("the of and to in is that it was for on are as with his they at be this from have or by one had not but "
         "what all were when we there can an your which their said if do will each about how up out them then she "
         "many some so these would other into has more her two like him see time could no make than first been its "
         "who now people my made over did down only way find use may water long little very after words called just "
         "where most know get through back much before go good new write our used me man too any day same right look "
         "think also around another came come work three word must because does part even place well such here take "
         "why things help put years different away again off went old number great tell men say small every found "
         "still between name should home big give air line set own under read last never us left end along while "
         "might next sound below saw something thought both few those always looked show large often together asked "
         "house don't world going want school important until form food keep children feet land side without boy "
         "once animals life enough took sometimes four head above kind began almost live page got earth need far hand "
         "high year mother light parts country father let night following picture being study second eyes soon times "
         "story boys since white days ever paper hard near sentence better best across during today others however "
         "sure means knew it's try told young miles sun ways thing whole hear example heard several change answer room "
         "sea against top turned learn point city play toward five using himself usually").split()
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
SYMBOLS = ["3.14159", "2024-05-08", "x = y + 1;", "fn main() {}", "<b>bold</b>", "e-mail@example.com", "100%",
           "$42.50", "C++", "naïve café", "Ｆｕｌｌｗｉｄｔｈ", "①②③", "ﬁne ligature", "…", "—"]


def corpus(rng):
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 18)
        words = [rng.choice(WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), rng.choice(SYMBOLS))
        if rng.random() < 0.25:
            words.append("".join(rng.choice(CJK) for _ in range(rng.randint(2, 8))))
        line = " ".join(words)
        if rng.random() < 0.5:
            line = line[0].upper() + line[1:] + rng.choice([".", "?", "!", ","])
        lines.append(line)
    return lines


TESTS = [
    "Hello world",
    "The capital of France is",
    " leading space",
    "  two leading spaces and  double  inner spaces  ",
    "trailing spaces   ",
    "tabs\tand\nnew\nlines\n",
    "\n\nstarts with newlines",
    "",
    " ",
    "unknownwords: zyxwvut qqqq jjjj",
    "numbers 1234567890 and 3.14159",
    "中文的测试，我们在这里。",
    "emoji 🎉👍🏽 and accents naïve café ÅÉÎÕÜ",
    "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ and ①②③ and ﬁne",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>glued<|im_start|>",
    "<s> and </s> and <unk> in text",
    "code: fn main() { println!(\"hi\"); }",
    "Tom & Jerry's <b>\"quoted\"</b> \\ back\\slash — 東京",
    "a" * 40,
    "mixed CASE Words With Capitals",
    "don't won't it's",
]

VARIANTS = {
    "llama-like": dict(normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
                       user_defined_symbols=["<|im_start|>", "<|im_end|>"]),
    "nfkc": dict(normalization_rule_name="nmt_nfkc", add_dummy_prefix=True, remove_extra_whitespaces=True),
    "identity-no-prefix": dict(normalization_rule_name="identity", add_dummy_prefix=False,
                               remove_extra_whitespaces=True),
}


class FamilyTokenizer(PreTrainedTokenizer):
    """The methods InternLM2Tokenizer and BaichuanTokenizer (remote code) implement, nothing else."""

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, add_bos_token=True, add_eos_token=False, **kwargs):
        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return self.sp_model.get_piece_size()

    def get_vocab(self):
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text):
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token):
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index):
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens):
        # BaichuanTokenizer's: runs of ordinary pieces through SentencePiece, special tokens verbatim.
        current, out, prev_is_special = [], "", False
        for i, token in enumerate(tokens):
            if token in self.all_special_tokens:
                if not prev_is_special and i != 0:
                    out += " "
                out += self.sp_model.decode(current) + token
                prev_is_special, current = True, []
            else:
                current.append(token)
                prev_is_special = False
        return out + self.sp_model.decode(current)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out = out + bos + token_ids_1 + eos
        return out


def main():
    rng = random.Random(20261122)
    lines = corpus(rng)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "corpus.txt"
        text.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for name, opts in VARIANTS.items():
            folder = OUT / name
            folder.mkdir(parents=True, exist_ok=True)
            prefix = Path(tmp) / name
            spm.SentencePieceTrainer.train(
                input=str(text), model_prefix=str(prefix), model_type="bpe", vocab_size=600,
                byte_fallback=True, character_coverage=0.9995, num_threads=1, shuffle_input_sentence=False,
                input_sentence_size=0, split_digits=True, minloglevel=2, **opts)
            # The trainer records its input and output paths (temporary here): clear them so that the file
            # depends on the corpus and the options only.
            proto = sp_pb2.ModelProto()
            proto.ParseFromString((prefix.with_suffix(".model")).read_bytes())
            proto.trainer_spec.ClearField("input")
            proto.trainer_spec.ClearField("model_prefix")
            model = proto.SerializeToString()
            (folder / "tokenizer.model").write_bytes(model)
            sp = spm.SentencePieceProcessor(model_proto=model)
            registered = [t for t in opts.get("user_defined_symbols", [])]
            config = {
                "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                "unk_token": "<unk>", "pad_token": "</s>", "clean_up_tokenization_spaces": False,
                "added_tokens_decoder": {
                    str(sp.piece_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                             "single_word": False, "special": True}
                    for t in ["<unk>", "<s>", "</s>"] + registered},
            }
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            tok = FamilyTokenizer(str(folder / "tokenizer.model"), unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="</s>", clean_up_tokenization_spaces=False,
                                  additional_special_tokens=[AddedToken(t, normalized=False, special=True)
                                                             for t in registered])
            cases = []
            for s in TESTS:
                ids = tok.encode(s, add_special_tokens=False)
                with_bos = tok.encode(s, add_special_tokens=True)
                assert with_bos == [sp.bos_id()] + ids, (s, with_bos)
                cases.append({"text": s, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids),
                              "ids_with_special_tokens": with_bos,
                              "decoded": tok.decode(ids, skip_special_tokens=True),
                              "sp_ids": sp.encode(s)})
            golden = {
                "format": "strata-spm-golden/1",
                "reference": {"sentencepiece": spm.__version__, "transformers": transformers.__version__,
                              "call": "FamilyTokenizer.encode(text, add_special_tokens=False|True) / .decode(ids)"},
                "options": {**opts, "model_type": "bpe", "vocab_size": 600, "byte_fallback": True,
                            "split_digits": True},
                "vocab_size": sp.get_piece_size(),
                "bos_id": sp.bos_id(), "eos_id": sp.eos_id(), "unk_id": sp.unk_id(),
                "cases": cases,
            }
            (folder / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n",
                                                encoding="utf-8")
            print(f"{name}: {len(model)} bytes, {sp.get_piece_size()} pieces", file=sys.stderr)


if __name__ == "__main__":
    main()
