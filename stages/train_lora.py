"""train_lora: the frozen pretrained encoder with our LoRA adapters; only adapters and head train."""

from __future__ import annotations

from stages._train import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main("lora", argv)


if __name__ == "__main__":
    raise SystemExit(main())
