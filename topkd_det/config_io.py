"""Reading yacs configs so that a bad file or override names itself instead of failing in yacs."""
import os
from typing import Iterable, Optional

from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A bad configuration value, reported before any work is done."""


def _yacs_message(err: Exception) -> str:
    return str(err.args[0]) if err.args else type(err).__name__


def merge_config(cfg: CN, config_file: Optional[str], opts: Iterable = (), *, file_key: str = "--config-file",
                 opts_key: str = "config override") -> CN:
    """Merge ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` opts, into ``cfg``.

    yacs reports an unknown key or a wrong type as a bare KeyError/AssertionError/ValueError; the
    ConfigError raised here names the file or the overrides it came from. ``file_key`` and
    ``opts_key`` say where the file and the overrides were given (a flag or a config key).
    """
    if config_file and not os.path.isfile(config_file):
        raise ConfigError(f"{file_key}: no such file {str(config_file)!r}")
    try:
        if config_file:
            cfg.merge_from_file(str(config_file))
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError(f"{config_file}: {_yacs_message(err)}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"{opts_key} {' '.join(map(str, opts))!r}: an odd number of items ({len(opts)}); "
                          "give KEY VALUE pairs")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as err:
        raise ConfigError(f"{opts_key} {' '.join(map(str, opts))!r}: {_yacs_message(err)} "
                          "(give KEY VALUE pairs of existing keys)") from None
    return cfg
