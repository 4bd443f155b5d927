"""Regenerate the committed tiny tokenizer: python scripts/make_tokenizer.py [--vocab-size 4096]"""

import argparse

from data_builders.scenes import corpus_sentences
from dopd_vlm.tiny import TOKENIZER_DIR, default_corpus, scene_corpus, train_tokenizer

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--out", default=str(TOKENIZER_DIR))
    args = ap.parse_args()
    # every question, answer and rendered privileged kind of the scenes, so scene words are one token
    tok = train_tokenizer(args.vocab_size, scene_corpus() + corpus_sentences() + default_corpus())
    tok.save_pretrained(args.out)
    print(f"wrote tokenizer with {len(tok)} tokens to {args.out}")
