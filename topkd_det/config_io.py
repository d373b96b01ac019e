"""Reading yacs configs so that a bad file or override names itself instead of failing in yacs."""
import os
import re
from pathlib import Path
from typing import Iterable, Optional

import yaml
from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A bad configuration value, reported before any work is done."""


# yacs' wording for a value whose type differs from the default's (yacs/config.py, pinned in lock.txt).
_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values "
                            r"\((.*) vs\. (.*)\) for config key: (\S+)$", re.S)
_TYPE_NAMES = {"float": "a float", "int": "an integer", "str": "a string", "bool": "True or False",
               "list": "a list", "tuple": "a tuple"}


def _type_mismatch(expected: str, given: str, default: str, value: str, key: str) -> str:
    shown = repr(value) if given == "str" else value
    text = f"{key} takes {_TYPE_NAMES.get(expected, expected)} (default {default}), got {_TYPE_NAMES.get(given, given)} {shown}"
    if expected == "float" and given == "int":
        return text + f": write {value}.0"
    if given == "str" and expected in ("int", "float"):
        return text + ": write the number without quotes"
    return text


def _yacs_message(err: Exception) -> str:
    text = str(err.args[0]) if err.args else type(err).__name__
    match = _TYPE_MISMATCH.search(text)
    return _type_mismatch(*match.groups()) if match else text


def merge_config(cfg: CN, config_file: Optional[str], opts: Iterable = (), *, file_key: str = "--config-file",
                 opts_key: str = "config override") -> CN:
    """Merge ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` opts, into ``cfg``.

    yacs reports an unknown key or a wrong type as a bare KeyError/AssertionError/ValueError; the
    ConfigError raised here names the file or the overrides it came from. ``file_key`` and
    ``opts_key`` say where the file and the overrides were given (a flag or a config key).
    """
    if config_file and not os.path.isfile(config_file):
        raise ConfigError(f"{file_key}: no such config file {str(config_file)!r} (relative paths are from "
                          f"{os.getcwd()!r})")
    try:
        if config_file:
            cfg.merge_from_file(str(config_file))
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError(f"{config_file}: {_yacs_message(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_file}: not valid YAML ({' '.join(str(err).split())})") from None
    except OSError as err:  # a _BASE_ file that is missing or unreadable
        raise ConfigError(f"{config_file}: {err.strerror or err}: {err.filename!r} (check its _BASE_ chain)") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"{opts_key} {' '.join(map(str, opts))!r}: an odd number of items ({len(opts)}); "
                          "give KEY VALUE pairs")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as err:
        message = _yacs_message(err)
        hint = " (give KEY VALUE pairs of existing keys)" if message.startswith("Non-existent key") else ""
        raise ConfigError(f"{opts_key} {' '.join(map(str, opts))!r}: {message}{hint}") from None
    return cfg


def output_dir_for(config_file: str) -> str:
    """``output/<path of the config below configs/, without .yaml>``, e.g. ``configs/fashion_mnist/kd.yaml``
    -> ``output/fashion_mnist/kd``; a config elsewhere gives ``output/<its folder>/<its name>``. Two
    configs thus never share a run folder unless one of them names it (OUTPUT_DIR)."""
    parts = Path(config_file).resolve().with_suffix("").parts
    below = [i for i, part in enumerate(parts) if part == "configs"]
    return str(Path("output", *(parts[below[-1] + 1:] if below else parts[-2:])))
