"""The ``diffjax`` command (work in progress: config loading and overrides).

Configs are ml_collections files with ``get_config()``: a name from ``experiments/configs`` (e.g.
``digits``) or a path to such a file. Overrides are dotted ``--config.KEY=VALUE`` arguments; a key
that the config does not have is an error naming it (network options under ``model.options`` are
checked against the network's own options instead).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from typing import Sequence

__all__ = ["CONFIG_DIR", "load_config", "apply_overrides"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "configs")


def _config_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    path = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
    if os.path.isfile(path):
        return path
    names = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and f != "default.py") \
        if os.path.isdir(CONFIG_DIR) else []
    raise ValueError(f"unknown config {name_or_path!r}: not a file, and not one of {names} in {CONFIG_DIR}")


def load_config(name_or_path: str = "digits", overrides: Sequence[str] = ()):
    """The config ``name_or_path`` with ``overrides`` (``"--config.a.b=value"`` or ``"a.b=value"``) applied."""
    path = _config_path(name_or_path)
    directory = os.path.dirname(path)
    sys.path.insert(0, directory)  # config files import their siblings (default.py)
    try:
        spec = importlib.util.spec_from_file_location(f"diffjax_config_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(directory)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    config = module.get_config()
    apply_overrides(config, overrides)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as vpsde


def apply_overrides(config, overrides: Sequence[str]) -> None:
    """Set dotted keys in place; unknown keys are a ValueError naming the key and the valid ones."""
    from diffjax.models import NETWORKS, PRESETS, network_options

    for item in overrides:
        text = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --config.section.key=value")
        dotted, raw = text.split("=", 1)
        *parents, leaf = dotted.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node:
                raise ValueError(f"unknown config key {'.'.join(parents[:i + 1])!r}; valid keys there: "
                                 f"{', '.join(sorted(node.keys()))}")
            node = node[part]
        value = _parse_value(raw)
        if parents == ["model", "options"]:
            model = config.model.name
            network = PRESETS[model][0] if model in PRESETS else model
            valid = network_options(network) if network in NETWORKS else ()
            if leaf not in valid:
                raise ValueError(f"unknown option {leaf!r} for network {network!r} (config key {dotted!r}); "
                                 f"valid options: {', '.join(valid)}")
            node[leaf] = value
            continue
        if not hasattr(node, "keys") or leaf not in node:
            where = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
            raise ValueError(f"unknown config key {dotted!r}; valid keys there: {where}")
        current = node[leaf]
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"config key {dotted!r} takes True or False; got {raw!r}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # "--config.optim.lr=1" means 1.0
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key {dotted!r}: cannot set {raw!r} ({e})") from None
