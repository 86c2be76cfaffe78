"""`python -m training` / `sentiment-train`: every TrainConfig field is a flag."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from contract.artifact import ArtifactError
from contract.device import DeviceUnavailable
from training.config import TrainConfig
from training.data import DataError
from training.export import ExportCheckError


def optional(base: typing.Callable[[str], object]) -> typing.Callable[[str], object]:
    """`base`, or None for the word "none"."""

    def parse_value(text: str) -> object:
        return None if text.lower() == "none" else base(text)

    parse_value.__name__ = getattr(base, "__name__", "value")  # argparse names the type in its error message
    return parse_value


def parse(argv: list[str] | None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train and export the IMDb sentiment model.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        elif typing.get_origin(kind) is typing.Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), default=f.default, help=f"default: {f.default}")
        else:
            args = typing.get_args(kind)
            base = next((a for a in args if a is not type(None)), kind)
            # an optional field takes "none" too: its default may be a value (--split-seed 0) that a run wants unset
            parse_value = optional(base) if type(None) in args else base
            parser.add_argument(flag, type=parse_value, default=f.default, help=f"default: {f.default}")
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    config = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its per-phase INFO lines drown the epoch log
    from training.pipeline import train  # after logging is set, so import-time logs are formatted too

    try:
        out = train(config)
    except (DataError, DeviceUnavailable, ArtifactError, ExportCheckError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model written to {out} (model card: {Path(out).parent / 'MODEL_CARD.md'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
