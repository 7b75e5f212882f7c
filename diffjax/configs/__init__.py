"""Run configurations (ml_collections), shipped with the package, and their dotted overrides.

    from diffjax.configs import load_config
    config = load_config("digits", ["--config.training.n_iters=200"])   # a name below, or a path

Every config starts from :func:`get_default`, the schema all configs share: an override may only
set a key that exists there (network options under ``model.options`` are checked against the
network's own options instead). Names: ``digits`` (the default job), ``toy2d``, and the paper's
CIFAR-10 runs (``cifar10_ve_ncsnpp_continuous``, ``cifar10_vp_ddpmpp_deep_continuous``, ...). A
config file of your own defines ``get_config()``, usually starting from
``from diffjax.configs import get_default``; it may also return a plain dict of the keys it sets, and
a run's saved ``config.json`` loads as a config too. Every config, however it was made, is checked
against the schema (:func:`validate`): a misspelled key, a value of the wrong type or a non-finite
number is an error that names it.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import json
import math
import os
import pkgutil
import sys
from typing import Sequence

import ml_collections

from diffjax.configs.default import get_default

__all__ = ["get_default", "names", "load_config", "apply_overrides", "set_sampling", "parse_value", "with_defaults",
           "validate", "from_dict"]

# numbers that may be infinite: PFGM++ with D = inf is EDM
_MAY_BE_INFINITE = ("sde.pfgmpp_D",)

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
            except (Exception, SystemExit) as e:  # a config file is user code: report what broke, in one line
                raise ValueError(f"config file {path} could not be run ({_short(e)})") from None
        finally:
            sys.path.remove(directory)
        return module, path
    if name_or_path not in names():
        close = difflib.get_close_matches(name_or_path, names(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"the {len(names())} shipped ones include digits, toy2d"
        raise ValueError(f"unknown config {name_or_path!r}: not a file, and not a shipped config ({hint}; all: "
                         "python -c 'import diffjax.configs as c; print(c.names())')")
    return importlib.import_module(f"diffjax.configs.{name_or_path}"), name_or_path


def load_config(name_or_path: str = "digits", overrides: Sequence[str] = ()):
    """The config ``name_or_path`` (a name from :func:`names`, a path to a file defining
    ``get_config()``, or a run's saved ``config.json``) with ``overrides`` (``"--config.a.b=value"``
    or ``"a.b=value"``) applied, checked against the schema (:func:`validate`)."""
    if name_or_path.endswith(".json") and os.path.isfile(name_or_path):
        try:
            with open(name_or_path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"config {name_or_path} is not readable JSON ({type(e).__name__}: {e})") from None
        config = from_dict(saved, name_or_path)
    else:
        module, where = _module(name_or_path)
        if not hasattr(module, "get_config"):
            raise ValueError(f"config {where} defines no get_config()")
        try:
            config = module.get_config()
        except (Exception, SystemExit) as e:
            raise ValueError(f"get_config() of {where} failed ({_short(e)})") from None
        config = from_dict(config, f"get_config() of {where}")
    apply_overrides(config, overrides)
    validate(config)
    return config


def _short(e: BaseException) -> str:
    """An exception from user code as ``Type: message`` on one line, at most 200 characters."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= 200 else text[:197] + "..."


def from_dict(value, where: str = "the config") -> ml_collections.ConfigDict:
    """A ConfigDict from a ConfigDict or a plain dict of the keys it sets, merged into
    :func:`get_default` (as a saved ``config.json``, or a ``get_config()`` that sets some sections)."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, dict):
        raise ValueError(f"{where} gave a {type(value).__name__}; expected an ml_collections.ConfigDict "
                         "(start from diffjax.configs.get_default()) or a dict of its keys")
    unknown = _unknown_keys(value, get_default().to_dict())
    if unknown:
        raise ValueError(f"{where}: {unknown}")
    try:
        return ml_collections.ConfigDict(with_defaults(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {' '.join(str(e).split())}") from None


def _unknown_keys(value: dict, schema: dict, prefix: str = "") -> str:
    """A message naming the first key of ``value`` that ``schema`` lacks ('' if none); model.options is free."""
    for k, v in value.items():
        dotted = prefix + str(k)
        if dotted == "model.options":
            continue
        if k not in schema:
            return _unknown_key_message(dotted, schema)
        if isinstance(v, dict) and isinstance(schema[k], dict):
            found = _unknown_keys(v, schema[k], dotted + ".")
            if found:
                return found
    return ""


def _unknown_key_message(dotted: str, schema) -> str:
    leaf = dotted.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, list(schema.keys()), n=1)
    keys = sorted(schema.keys())
    listed = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    hint = f" (did you mean {close[0]!r}?)" if close else f"; valid keys there: {listed}"
    return f"unknown config key {dotted!r}{hint}"


def validate(config) -> None:
    """Raise a one-line ValueError unless every key of ``config`` is in the schema (network options:
    in the network's options), every value has the schema's type, and every number is finite."""
    from diffjax.models import NETWORKS, PRESETS, network_options

    def walk(node, ref, prefix):
        for key in node.keys():
            dotted, value = prefix + key, node[key]
            if dotted == "model.options":
                name = config.model.name
                network = PRESETS[name][0] if name in PRESETS else name
                valid = network_options(network) if network in NETWORKS else None
                for option in value.keys():
                    if valid is not None and option not in valid:
                        close = difflib.get_close_matches(option, list(valid), n=1)
                        hint = (f"did you mean {close[0]!r}?" if close else "valid: " + ", ".join(list(valid)[:8])
                                + (f" and {len(valid) - 8} more" if len(valid) > 8 else ""))
                        raise ValueError(f"unknown option {option!r} for network {network!r} (config key "
                                         f"'model.options.{option}'); {hint}")
                    _check_finite(f"model.options.{option}", value[option])
                continue
            if key not in ref:
                raise ValueError(_unknown_key_message(dotted, ref))
            expected = ref[key]
            if isinstance(expected, ml_collections.ConfigDict):
                if not isinstance(value, ml_collections.ConfigDict):
                    raise ValueError(f"config key {dotted!r} is a section; got {value!r}")
                walk(value, expected, dotted + ".")
                continue
            _check_type(dotted, value, expected)
            if dotted not in _MAY_BE_INFINITE:
                _check_finite(dotted, value)
            if dotted in _RANGES:
                ok, wanted = _RANGES[dotted]
                if not ok(value):
                    raise ValueError(f"config key {dotted!r} must be {wanted}; got {value!r}")

    walk(config, get_default(), "")


# value ranges checked by validate (what the code downstream would otherwise reject late or misuse)
_RANGES = {
    "seed": (lambda v: 0 <= v < 2 ** 63, "an integer in [0, 2**63)"),
    "training.batch_size": (lambda v: v >= 1, ">= 1"),
    "training.n_iters": (lambda v: v >= 0, ">= 0"),
    "training.n_jitted_steps": (lambda v: v >= 1, ">= 1"),
    "training.log_freq": (lambda v: v >= 1, ">= 1"),
    "training.snapshot_freq": (lambda v: v >= 1, ">= 1"),
    "training.keep_last": (lambda v: v >= 1, ">= 1 (the newest checkpoint is always kept)"),
    "training.keep_period": (lambda v: v >= 0, ">= 0 (0: none extra)"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.warmup": (lambda v: v >= 0, ">= 0"),
    "optim.beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.eps": (lambda v: v > 0, "> 0"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "model.ema_rate": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "sampling.num_steps": (lambda v: 1 <= v <= 10 ** 6, "in [1, 10**6]"),
    "distill.method": (lambda v: v in ("", "consistency", "progressive"), "'', 'consistency' or 'progressive'"),
    "distill.target": (lambda v: v in ("teacher", "data"), "'teacher' (distillation) or 'data' (training)"),
    "distill.stage_steps": (lambda v: v >= 1, ">= 1"),
    "distill.q": (lambda v: v > 1, "> 1"),
    "distill.p_std": (lambda v: v > 0, "> 0"),
    "distill.num_steps": (lambda v: 1 <= v <= 4096, "in [1, 4096]"),
    "sampling.langevin_steps": (lambda v: 1 <= v <= 10 ** 4, "in [1, 10**4]"),
    "sampling.num_samples": (lambda v: 0 <= v <= 10 ** 7, "in [0, 10**7] (0: no samples at the end)"),
    "sampling.batch_size": (lambda v: v >= 1, ">= 1"),
    "sampling.order": (lambda v: 0 <= v <= 4, "0 (the sampler's default), 1, 2, 3 (or 4 for ipndm)"),
    "sampling.solver_nfe": (lambda v: 0 <= v <= 10 ** 4, "in [0, 10**4] (0: the run's only fitted solver)"),
    "sampling.noise": (lambda v: v in ("independent", "brownian"), "independent or brownian"),
    "eval.bpd_num_examples": (lambda v: v >= 0, ">= 0"),
    "eval.bpd_rtol": (lambda v: v > 0, "> 0"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "parallel.fsdp": (lambda v: v >= 1, ">= 1"),
}


def _check_type(dotted: str, value, expected) -> None:
    kinds = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    ok = (isinstance(value, bool) if isinstance(expected, bool) else
          isinstance(value, int) and not isinstance(value, bool) if isinstance(expected, int) else
          isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(expected, float) else
          isinstance(value, str) if isinstance(expected, str) else True)
    if not ok:
        raise ValueError(f"config key {dotted!r} takes {kinds.get(type(expected), type(expected).__name__)}; "
                         f"got {value!r}")


def _check_finite(dotted: str, value) -> None:
    values = value if isinstance(value, (tuple, list)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ValueError(f"config key {dotted!r} must be finite; got {value!r}")


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
        if isinstance(value, float) and not math.isfinite(value) and dotted not in _MAY_BE_INFINITE:
            raise ValueError(f"config key {dotted!r} must be finite; got {raw!r}")
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"config key {dotted!r} takes True or False; got {raw!r}")
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # "--config.optim.lr=1" means 1.0
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key {dotted!r}: cannot set {raw!r} ({e})") from None


# keys and values renamed since a run could have been saved: (section, old key) -> new key, and values
_RENAMED_KEYS = {("sampling", "n_steps"): "num_steps", ("sampling", "n_steps_each"): "langevin_steps"}
_RENAMED_VALUES = {("training", "fp_divergence"): {"hutchinson": "rademacher"}}


def _migrate(saved: dict) -> dict:
    """A saved config with the keys and values diffjax 0.2 renamed given their new names."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for (section, old), new in _RENAMED_KEYS.items():
        if isinstance(out.get(section), dict) and old in out[section] and new not in out[section]:
            out[section][new] = out[section].pop(old)
    for (section, key), mapping in _RENAMED_VALUES.items():
        value = out.get(section, {}).get(key) if isinstance(out.get(section), dict) else None
        if isinstance(value, str) and value in mapping:
            out[section][key] = mapping[value]
    return out


def set_sampling(config, options: dict) -> None:
    """Set typed values of ``config.sampling``'s keys in place (the ``diffjax sample`` flags): an unknown
    key or a value of the wrong type is a one-line ValueError naming it."""
    for key, value in options.items():
        if key not in config.sampling:
            raise ValueError(_unknown_key_message(f"sampling.{key}", config.sampling))
        current = config.sampling[key]
        if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(current, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = repr(value)  # sampling.teleport takes "auto", "off" or a number as text
        try:
            config.sampling[key] = value
        except (TypeError, ValueError) as e:
            raise ValueError(f"sampling.{key}: cannot set {value!r} ({' '.join(str(e).split())[:120]})") from None


def with_defaults(saved: dict) -> dict:
    """A saved config (a plain dict) with the keys that newer versions of the schema added filled in
    from :func:`get_default`, and the keys later renamed given their new names, so runs saved before
    load and resume unchanged."""
    saved = _migrate(saved)

    def merge(default: dict, value: dict) -> dict:
        out = dict(default)
        for k, v in value.items():
            out[k] = merge(default[k], v) if isinstance(v, dict) and isinstance(default.get(k), dict) else v
        return out

    return merge(get_default().to_dict(), saved)
