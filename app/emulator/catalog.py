"""The models the emulator can "pull": realistic names, sizes, digests and details.

Digests are stable (derived from the name) so a test can pin them. A name given with
`--models` that is not here still installs: its details are made up from the name.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from app.emulator.names import ModelName, parse

LLAMA_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)
PLAIN_TEMPLATE = "{{ .Prompt }}"


@dataclass(frozen=True)
class Spec:
    """One model of the catalog."""

    name: str
    family: str
    parameter_size: str
    quantization: str
    size: int
    capabilities: tuple[str, ...] = ("completion",)
    context_length: int = 131072
    embedding_length: int = 4096
    template: str = LLAMA_TEMPLATE
    stop: tuple[str, ...] = ()
    license: str = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/"
    aliases: tuple[str, ...] = ()
    families: tuple[str, ...] = field(default=())

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"ollama-emulator:{self.name}".encode()).hexdigest()

    def layers(self) -> list[tuple[str, str, int]]:
        """(media type, sha256 hex, size) of each blob, the model weights first."""

        def blob(kind: str) -> str:
            return hashlib.sha256(f"{self.name}:{kind}".encode()).hexdigest()

        small = [
            ("application/vnd.ollama.image.template", blob("template"), len(self.template)),
            ("application/vnd.ollama.image.license", blob("license"), len(self.license)),
            ("application/vnd.ollama.image.params", blob("params"), 96),
        ]
        weights = self.size - sum(s for _, _, s in small)
        return [("application/vnd.ollama.image.model", blob("model"), weights), *small]

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities


_TOOLS = ("completion", "tools")

CATALOG: tuple[Spec, ...] = (
    Spec("llama3.1:8b", "llama", "8.0B", "Q4_K_M", 4920753328, _TOOLS,
         stop=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
         license="LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: July 23, 2024",
         aliases=("llama3.1:latest",)),
    Spec("llama3.2:3b", "llama", "3.2B", "Q4_K_M", 2019393189, _TOOLS,
         stop=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
         embedding_length=3072,
         license="LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024",
         aliases=("llama3.2:latest",)),
    Spec("llama3.2:1b", "llama", "1.2B", "Q8_0", 1321098329, _TOOLS, embedding_length=2048,
         stop=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Spec("qwen2.5:0.5b", "qwen2", "494.03M", "Q4_K_M", 397821319, _TOOLS, context_length=32768,
         embedding_length=896, template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>")),
    Spec("qwen2.5:7b", "qwen2", "7.6B", "Q4_K_M", 4683087332, _TOOLS, context_length=32768,
         embedding_length=3584, template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>"),
         aliases=("qwen2.5:latest",)),
    Spec("smollm2:135m", "llama", "134.52M", "F16", 270898672, _TOOLS, context_length=8192,
         embedding_length=576, template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>")),
    Spec("smollm2:360m", "llama", "361.82M", "F16", 725566512, _TOOLS, context_length=8192,
         embedding_length=960, template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>")),
    Spec("smollm2:1.7b", "llama", "1.7B", "Q8_0", 1820414928, _TOOLS, context_length=8192,
         embedding_length=2048, template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>"),
         aliases=("smollm2:latest",)),
    Spec("phi3:mini", "phi3", "3.8B", "Q4_0", 2176178913, ("completion",), context_length=131072,
         embedding_length=3072, template=PLAIN_TEMPLATE, stop=("<|end|>", "<|user|>"),
         license="Microsoft.\nCopyright (c) Microsoft Corporation.\nMIT License",
         aliases=("phi3:latest", "phi3:3.8b")),
    Spec("mistral:7b", "llama", "7.2B", "Q4_K_M", 4113301824, _TOOLS, context_length=32768,
         template="[INST] {{ .Prompt }} [/INST]", stop=("[INST]", "[/INST]"),
         aliases=("mistral:latest",)),
    Spec("codellama:7b", "llama", "7B", "Q4_0", 3825910662, ("completion", "insert"),
         context_length=16384, template="[INST] <<SYS>>{{ .System }}<</SYS>>\n\n{{ .Prompt }} [/INST]",
         aliases=("codellama:latest",)),
    Spec("gemma3:1b", "gemma3", "999.89M", "Q4_K_M", 815319791, ("completion",),
         context_length=32768, embedding_length=1152,
         template="<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n",
         stop=("<end_of_turn>",), license="Gemma Terms of Use\nLast modified: February 21, 2024"),
    Spec("gemma4:e2b", "gemma4", "5.1B", "Q4_K_M", 7162394016,
         ("completion", "vision", "audio", "tools"), context_length=131072,
         embedding_length=1536,
         template="<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n",
         stop=("<end_of_turn>",), license="Gemma Terms of Use"),
    Spec("qwen3:0.6b", "qwen3", "751.63M", "Q4_K_M", 522653767,
         ("completion", "tools", "thinking"), context_length=40960, embedding_length=1024,
         template=CHATML_TEMPLATE, stop=("<|im_start|>", "<|im_end|>")),
    Spec("deepseek-r1:1.5b", "qwen2", "1.8B", "Q4_K_M", 1117322599, ("completion", "thinking"),
         embedding_length=1536, stop=("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
         license="MIT License\n\nCopyright (c) 2023 DeepSeek"),
    Spec("nomic-embed-text:latest", "nomic-bert", "137M", "F16", 274302450, ("embedding",),
         context_length=2048, embedding_length=768, template=PLAIN_TEMPLATE,
         aliases=("nomic-embed-text:v1.5",)),
)  # fmt: skip


def _index() -> dict[tuple[str, str, str, str], Spec]:
    index: dict[tuple[str, str, str, str], Spec] = {}
    for spec in CATALOG:
        for alias in (spec.name, *spec.aliases):
            parsed = parse(alias)
            assert parsed is not None, alias
            index[parsed.key] = spec
    return index


_BY_KEY = _index()


def lookup(name: ModelName) -> Spec | None:
    """The catalog entry for a name (aliases such as `llama3.1:latest` included)."""
    return _BY_KEY.get(name.key)


def synthesise(name: ModelName) -> Spec:
    """Plausible details for a name the catalog lacks (accepted by `--models`)."""
    h = int(hashlib.sha256(name.full.lower().encode()).hexdigest()[:8], 16)
    embedding = "embed" in name.model.lower()
    caps: tuple[str, ...] = ("embedding",) if embedding else ("completion", "tools")
    if not embedding and any(w in name.model.lower() for w in ("r1", "qwen3", "think")):
        caps = ("completion", "tools", "thinking")
    family = "nomic-bert" if embedding else name.model.split(".")[0].rstrip("0123456789") or "llama"
    return Spec(
        name=name.short,
        family=family,
        parameter_size="137M" if embedding else f"{1 + h % 13}.{h % 10}B",
        quantization="F16" if embedding else "Q4_K_M",
        size=200_000_000 + h % 5_000_000_000,
        capabilities=caps,
        embedding_length=768 if embedding else 4096,
        template=PLAIN_TEMPLATE if embedding else LLAMA_TEMPLATE,
    )
