"""Load user code named by an import path: ``pkg.module:name`` or ``path/to/file.py:name``.

Rewards (``--reward``), data hooks (``--sample-filter``, ``--group-filter``, ``--buffer``) and reward
models are all named this way, as slime names its ``--custom-rm-path``; one loader gives every flag the
same forms and the same errors. A module is looked up on ``sys.path`` and then in the current folder (as
``python -m`` would), so ``--reward my_reward:fn`` finds ``./my_reward.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from agentrl.errors import ConfigError


def is_import_path(text: str) -> bool:
    """True when ``text`` looks like ``module:name`` rather than a built-in name."""
    module, sep, name = text.rpartition(":")
    return bool(sep and module and name)


def load_object(spec: str, flag: str) -> Any:
    """The object ``spec`` names (``pkg.module:name`` or ``file.py:name``; ``name`` may be dotted).

    Raises:
        ConfigError: naming ``flag``, when the module cannot be imported or has no such attribute.
    """
    if not is_import_path(spec):
        raise ConfigError(
            f"{flag} {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    module_name, _, attr = spec.rpartition(":")
    if os.getcwd() not in sys.path:  # `agentrl` is a console script: its sys.path lacks the current folder
        sys.path.append(os.getcwd())
    try:
        if module_name.endswith(".py"):
            module = _module_from_file(Path(module_name), flag)
        else:
            module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(
            f"{flag} {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); is it on PYTHONPATH "
            "(run from the folder that holds it, or install the package)?"
        ) from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ConfigError(
                f"{flag} {spec!r}: {module_name!r} has no attribute {attr!r}; it defines: "
                f"{', '.join(public[:20]) or 'nothing public'}"
            )
        obj = getattr(obj, part)
    return obj


def _module_from_file(path: Path, flag: str) -> Any:
    if not path.is_file():
        raise ConfigError(f"{flag}: no such file {path}")
    name = f"agentrl_user_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
