"""Hugging Face model ids as a model path: `org/name`, `org/name@revision`, `org/name:Q4_K_M`.

The `:QUANT` suffix picks one GGUF file of a repo that holds several (llama.cpp's `-hf` syntax);
`@revision` is a branch, tag or commit sha. A run records the commit sha (`org/name@<sha>`), so a
resume uses the same weights. `hf://org/name` is accepted too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

_ID = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})"
                 r"(?:@(?P<revision>[^:@\s]+))?(?::(?P<quant>[A-Za-z0-9._-]+))?$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ModelId:
    repo_id: str                  # "org/name"
    revision: str | None = None   # branch, tag or commit sha; None = main
    quant: str | None = None      # GGUF repos: "Q4_K_M" or a file name

    @property
    def spec(self) -> str:
        """The id as a model path again."""
        return (self.repo_id + (f"@{self.revision}" if self.revision else "")
                + (f":{self.quant}" if self.quant else ""))

    @property
    def pinned(self) -> bool:
        """The revision is a commit sha: the files can never change."""
        return bool(self.revision and _SHA.match(self.revision))

    @property
    def url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo_id}"

    def at(self, revision: str, quant: str | None = None) -> "ModelId":
        return replace(self, revision=revision, quant=quant or self.quant)


def parse(spec: str) -> ModelId | None:
    """The Hugging Face id `spec` spells, or None when it is not one (a path, "demo", ...)."""
    match = _ID.match(str(spec).strip())
    if not match or match.group("repo").endswith((".gguf", ".json")):
        return None
    return ModelId(match.group("repo"), match.group("revision"), match.group("quant"))
