"""The installed package's version: one lookup for the OpenAPI document, OIP server metadata and gRPC."""

from __future__ import annotations

from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("sentiment-service")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"
