"""Regenerate the committed tiny tokenizer: python scripts/make_tokenizer.py [--vocab-size 4096]"""

import argparse

from dopd_vlm.tiny import TOKENIZER_DIR, train_tokenizer

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--out", default=str(TOKENIZER_DIR))
    args = ap.parse_args()
    tok = train_tokenizer(args.vocab_size)
    tok.save_pretrained(args.out)
    print(f"wrote tokenizer with {len(tok)} tokens to {args.out}")
