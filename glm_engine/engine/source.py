"""What a path or a name given to ``load``, ``run``, ``chat``, ``export`` or ``bench`` names, decided in one place.

A name is a preset of some family (seeded random weights, for tests and demos), or a folder: an exported graph
(ONNX / TensorRT, run by a graph-level backend) or a checkpoint that one family recognises from its metadata (SAT or
native GLM-130B, a Hugging Face folder). :func:`open_source` answers with the family, the config, a description for
messages and a reader of the weights, having read no tensor data (``docs/architecture.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glm_engine.errors import CheckpointError, ConfigError, InputError
from glm_engine.exported import exported_kind, read_exported
from glm_engine.model.config_checks import read_json_object
from glm_engine.model.family import Family
from glm_engine.model.registry import FAMILIES, family_of, family_of_folder, preset_family, preset_names
from glm_engine.model.weights import Progress, ReadRequest, Weight, WeightReader
from glm_engine.quant.spec import QuantSpec

# What ``load()`` and ``glm-engine run`` use without a checkpoint: the small trained bilingual demo model shipped
# with the package (tools/train_demo_model.py made it).
DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "assets" / "demo_model")
RANDOM_WEIGHTS_SEED = 1234
# Random weights are for test-sized presets; anything larger needs a checkpoint.
MAX_RANDOM_PARAMETERS = 2_000_000_000


@dataclass
class ModelSource:
    """A resolved model name: its family and config, how to describe it, and where its weights come from."""

    name: str  # as given
    family: Family
    config: Any
    description: str
    reader: WeightReader | None  # None: an exported graph, whose weights only its backend reads
    folder: Path | None = None  # a checkpoint or exported folder (the tokenizer is looked for there)
    random: bool = False
    exported: str | None = None  # "onnx" or "tensorrt" for an exported folder
    exported_dtype: torch.dtype | None = None  # the exported graph's own dtype
    notes: list[str] = field(default_factory=list)


class RandomWeights:
    """A preset's seeded random weights, drawn on first read (so naming a preset costs nothing until it loads)."""

    def __init__(self, family: Family, config: Any, name: str, dtype: torch.dtype, limit: int) -> None:
        parameters = config.num_parameters()
        if parameters > limit:
            raise InputError(
                f"preset {name} has {parameters / 1e9:.1f}B parameters; random weights are only for small presets: "
                "pass a checkpoint"
            )
        self.family, self.config, self.name, self.dtype = family, config, name, dtype
        self.description = f"preset {name} with random weights (seed {RANDOM_WEIGHTS_SEED})"
        self.unused_keys: list[str] = []
        self._reader: WeightReader | None = None

    @property
    def stored_quant(self) -> QuantSpec | None:
        return None

    def runtime_quant_specs(self, tp: int) -> list[QuantSpec]:
        return []

    def read(
        self, request: ReadRequest, keys: list[str] | None = None, progress: Progress | None = None
    ) -> dict[str, Weight]:
        if self._reader is None:
            state = self.family.random_state_dict(self.config, RANDOM_WEIGHTS_SEED, self.dtype)
            self._reader = self.family.state_dict_reader(state, self.config, self.description)
        return self._reader.read(request, keys, progress)


def is_preset(name: str | Path) -> bool:
    """Whether ``name`` names a preset (and no file or folder of that name exists here)."""
    return isinstance(name, str) and name in preset_names() and not Path(name).exists()


def resolve_config(config: Any, family: Family | None = None) -> Any:
    """``config`` as a family's config object: a config, a preset name, or a JSON file in ``family``'s terms
    (None stays None: use the source's own)."""
    if config is None:
        return None
    if any(isinstance(config, f.config_type) for f in FAMILIES):
        return config
    found = preset_family(str(config))
    if found is not None:
        return found[1]
    if Path(config).is_file():
        reader = family or FAMILIES[0]
        return reader.config_from_dict(read_json_object(config), str(config))
    raise ConfigError(f"--config {config!r} is neither a preset ({', '.join(preset_names())}) nor a config.json file")


def exported_config(path: Path) -> tuple[Family, Any, torch.dtype]:
    info = read_exported(path)
    return family_of(info.config), info.config, info.dtype


def open_source(
    path_or_preset: str | Path = DEFAULT_MODEL,
    config: Any = None,
    random_dtype: torch.dtype = torch.float32,
    max_random_parameters: int = MAX_RANDOM_PARAMETERS,
) -> ModelSource:
    """Recognise and describe what ``path_or_preset`` names, validating a checkpoint from metadata alone.

    ``config`` (a config, preset name or config.json) replaces a preset's shapes, or names the shapes of a checkpoint
    folder that has no config of its own (a GLM-130B SAT folder); ``random_dtype`` and ``max_random_parameters``
    govern a preset's random weights.
    """
    name = str(path_or_preset)
    if is_preset(name):
        family, preset_config = preset_family(name)
        chosen = resolve_config(config, family) or preset_config
        if family_of(chosen) is not family:
            raise ConfigError(f"--config for preset {name} must be a {family.title} config")
        reader = RandomWeights(family, chosen, name, random_dtype, max_random_parameters)
        return ModelSource(name, family, chosen, reader.description, reader, None, random=True)
    folder = Path(name).expanduser()
    if not folder.exists():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is a file; pass the folder that holds it")
    kind = exported_kind(folder)
    if kind is not None:
        family, exported, dtype = exported_config(folder)
        description = f"exported {family.title} model {name}"
        return ModelSource(name, family, exported, description, None, folder, exported=kind, exported_dtype=dtype)
    family = family_of_folder(folder)
    if family is None:
        raise CheckpointError(
            f"{folder} is not a checkpoint: expected config.json with model.safetensors or "
            "model.safetensors.index.json (native), a 'latest' file and an iteration folder (SAT), or a Hugging Face "
            f"folder of a supported family ({', '.join(f.title for f in FAMILIES)})"
        )
    chosen = resolve_config(config, family)
    if chosen is not None and family_of(chosen) is not family:
        raise ConfigError(
            f"--config names a {family_of(chosen).title} config, but {folder} is a {family.title} checkpoint"
        )
    reader = family.open_checkpoint(folder, chosen)
    described = "the built-in demo model" if name == DEFAULT_MODEL else reader.description
    return ModelSource(name, family, reader.config, described, reader, folder)
