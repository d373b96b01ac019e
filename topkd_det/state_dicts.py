"""Comparing a state dict with the model it is meant for, in words a user can act on."""
from typing import List, Mapping, Optional

# Shown per kind of mismatch; the counts are always given in full.
_SHOWN = 5


def _listed(kind: str, keys: List[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {kind}: {', '.join(keys[:_SHOWN])}{more}"


def mismatch(expected: Mapping, given: Mapping) -> Optional[str]:
    """None if ``given`` has exactly ``expected``'s keys and tensor shapes; else the missing, unexpected
    and reshaped keys (file vs model)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong_shape = [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in given and tuple(given[k].shape) != tuple(v.shape)]
    problems = [_listed(kind, keys) for kind, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches (file vs model)", wrong_shape),
    ) if keys]
    return "; ".join(problems) or None
