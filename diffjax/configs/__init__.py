"""Run configurations (ml_collections), shipped with the package, and their dotted overrides.

    from diffjax.configs import load_config
    config = load_config("digits", ["--config.training.n_iters=200"])   # a name below, or a path

Every config starts from :func:`get_default`, the schema all configs share: an override may only
set a key that exists there (network options under ``model.options`` are checked against the
network's own options instead). Names: ``digits`` (the default job), ``toy2d``, and the paper's
CIFAR-10 runs (``cifar10_ve_ncsnpp_continuous``, ``cifar10_vp_ddpmpp_deep_continuous``, ...). A
config file of your own defines ``get_config()``, usually starting from
``from diffjax.configs import get_default``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil
import sys
from typing import Sequence

from diffjax.configs.default import get_default

__all__ = ["get_default", "names", "load_config", "apply_overrides", "parse_value", "with_defaults"]

_NOT_CONFIGS = ("default",)


def names() -> list[str]:
    """The names of the configs shipped with diffjax."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_CONFIGS)


def _module(name_or_path: str):
    if os.path.isfile(name_or_path):
        path = os.path.abspath(name_or_path)
        directory = os.path.dirname(path)
        sys.path.insert(0, directory)  # a config file may import its siblings
        try:
            spec = importlib.util.spec_from_file_location(f"diffjax_user_config_{abs(hash(path))}", path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # a config file is user code: report what broke, in one line
                raise ValueError(f"config file {path} could not be run ({type(e).__name__}: {e})") from e
        finally:
            sys.path.remove(directory)
        return module, path
    if name_or_path not in names():
        raise ValueError(f"unknown config {name_or_path!r}: not a file, and not one of {names()}")
    return importlib.import_module(f"diffjax.configs.{name_or_path}"), name_or_path


def load_config(name_or_path: str = "digits", overrides: Sequence[str] = ()):
    """The config ``name_or_path`` (a name from :func:`names` or a path to a file defining
    ``get_config()``) with ``overrides`` (``"--config.a.b=value"`` or ``"a.b=value"``) applied."""
    module, where = _module(name_or_path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config {where} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as e:
        raise ValueError(f"get_config() of {where} failed ({type(e).__name__}: {e})") from e
    apply_overrides(config, overrides)
    return config


def parse_value(text: str):
    """A Python literal (number, tuple, bool, quoted string), or the bare text (such as vpsde)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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
            if not hasattr(node, "keys") or part not in node:
                where = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a section)"
                raise ValueError(f"unknown config key {'.'.join(parents[:i + 1])!r}; valid keys there: {where}")
            node = node[part]
        value = parse_value(raw)
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


def with_defaults(saved: dict) -> dict:
    """A saved config (a plain dict) with the keys that newer versions of the schema added filled in
    from :func:`get_default`, so runs saved before a key existed load and resume unchanged."""
    def merge(default: dict, value: dict) -> dict:
        out = dict(default)
        for k, v in value.items():
            out[k] = merge(default[k], v) if isinstance(v, dict) and isinstance(default.get(k), dict) else v
        return out

    return merge(get_default().to_dict(), saved)
