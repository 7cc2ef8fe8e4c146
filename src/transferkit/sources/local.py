"""Sources from the user's own files: ``file:<checkpoint.safetensors>`` and ``run:<run dir>``.

``file:`` reads a safetensors checkpoint and a JSON file beside it (same stem, ``.json``) that
names the architecture::

    {"architecture": "torchvision:resnet18"}            # a torchvision/timm state dict as saved
    {"architecture": "timm:resnet18", "preprocessing": {"image_size": 160}}

``run:`` turns a transferkit run directory into a source: its shared layers and its trained
head (which then acts as the source head, for LEEP/NCE), so a model trained on a source task
transfers to a target task.
"""

from __future__ import annotations

from pathlib import Path

from transferkit._io import load_weights, read_json
from transferkit.errors import ConfigError
from transferkit.sources import timm as timm_source
from transferkit.sources import torchvision as tv_source
from transferkit.sources.base import SCHEMES, SourceModel


@SCHEMES.register("file")
def load_file_source(name: str, pretrained: bool) -> SourceModel:
    path = Path(name).expanduser()
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        raise ConfigError(
            f"`file:{name}` needs a JSON file beside it naming the architecture, e.g. "
            f"{str(config_path)!r} containing {{\"architecture\": \"torchvision:resnet18\"}}."
        )
    config = read_json(config_path)
    arch = config.get("architecture", "")
    state = load_weights(path) if pretrained else None
    scheme, _, arch_name = arch.partition(":")
    if scheme == "torchvision":
        source = tv_source.build(arch_name, weights=None, state_dict=state)
    elif scheme == "timm":
        source = timm_source.build(arch_name, pretrained=False, state_dict=state,
                                   model_kwargs=config.get("model_kwargs"))
    else:
        raise ConfigError(
            f"`architecture` in {str(config_path)!r} must be 'torchvision:<name>' or 'timm:<name>'; "
            f"got {arch!r}. For a transferkit run directory use `run:<dir>`."
        )
    for key, value in config.get("preprocessing", {}).items():
        setattr(source.preprocessing, key, tuple(value) if isinstance(value, list) else value)
    source.weights = str(path) if pretrained else "random init"
    return source


@SCHEMES.register("run")
def load_run_source(name: str, pretrained: bool) -> SourceModel:
    from transferkit.pipeline import load_run

    run = load_run(Path(name).expanduser(), load_weights=pretrained)
    source = run.as_source()
    source.weights = f"transferkit run {name}" if pretrained else "random init"
    return source
