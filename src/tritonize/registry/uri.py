"""`models:/NAME/VERSION` and `models:/NAME@ALIAS`: the two registry URIs a build accepts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonize.errors import RegistryError

FORMS = (
    "`models:/NAME/VERSION` (e.g. `models:/sentiment/3`) or `models:/NAME@ALIAS` "
    "(e.g. `models:/sentiment@champion`)"
)
_URI = re.compile(
    r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>[A-Za-z0-9_-]+))$"
)
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@dataclass(frozen=True)
class ModelUri:
    """A registered model and either a version number or an alias."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelUri:
        match = _URI.match(uri.strip()) if isinstance(uri, str) else None
        if match is None:
            raise RegistryError(f"registry URI {uri!r} is not allowed: expected {FORMS}")
        version = match["version"]
        return cls(match["name"], int(version) if version else None, match["alias"])

    def __str__(self) -> str:
        if self.alias is not None:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


def is_model_uri(value: object) -> bool:
    """Whether `value` is meant as a registry URI (`--model models:/...`), parsed or not."""
    return isinstance(value, str) and value.startswith("models:")


def check_alias(alias: str) -> str:
    """MLflow's alias rule, checked before any request: letters, digits, '_' and '-'."""
    reserved = alias.lower() == "latest" or re.match(r"^v[0-9]+$", alias, re.IGNORECASE)
    if not _ALIAS.match(alias) or reserved:
        raise RegistryError(
            f"alias {alias!r} is not allowed: expected 1-255 letters, digits, '_' or '-', "
            "neither `latest` nor `v<number>` (those name versions)"
        )
    return alias
