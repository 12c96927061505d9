"""train_scratch: a small BERT initialised at random, with the pretrained tokenizer."""

from __future__ import annotations

from stages._train import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main("scratch", argv)


if __name__ == "__main__":
    raise SystemExit(main())
