"""train_full: the pretrained encoder with a classification head, every parameter trained."""

from __future__ import annotations

from stages._train import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main("full", argv)


if __name__ == "__main__":
    raise SystemExit(main())
