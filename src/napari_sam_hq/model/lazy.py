"""``LazyModel``: a model known by its name and checkpoint id, loaded only when used.

The embedding store keys embeddings by model name and checkpoint id. Both are known without
loading the weights once the checkpoint has been loaded on this machine: ``load`` records
them in ``checkpoint-ids.json`` in the cache folder, under the file's resolved path, size and
modification time. A file that changed (size or mtime) is loaded again, never trusted. So a
run that finds every embedding stored (``napari-sam-hq embed`` a second time) never loads
the model, and never imports torch. Torch-free module.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .download import Progress, cache_dir, checkpoint_path

if TYPE_CHECKING:
    from .sam_hq import SamHQ

_IDS_FILE = "checkpoint-ids.json"


def _stat_key(path: Path) -> tuple[str, dict[str, int]]:
    st = path.stat()
    return str(path.resolve()), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def known_identity(path: str | Path) -> tuple[str, str] | None:
    """``(model name, checkpoint id)`` recorded for ``path`` if the file is unchanged since."""
    path = Path(path)
    if not path.exists():
        return None
    key, stamp = _stat_key(path)
    try:
        entry = json.loads((cache_dir() / _IDS_FILE).read_text()).get(key)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in stamp.items()):
        return None
    name, checkpoint_id = entry.get("name"), entry.get("checkpoint_id")
    return (name, checkpoint_id) if isinstance(name, str) and isinstance(checkpoint_id, str) else None


def record_identity(path: str | Path, name: str, checkpoint_id: str) -> None:
    """Remember ``(name, checkpoint id)`` for ``path`` as it is now (written atomically;
    a cache folder that cannot be written only costs a load next time)."""
    path = Path(path)
    key, stamp = _stat_key(path)
    ids_file = cache_dir() / _IDS_FILE
    try:
        ids = json.loads(ids_file.read_text()) if ids_file.is_file() else {}
        if not isinstance(ids, dict):
            ids = {}
    except (OSError, ValueError):
        ids = {}
    ids[key] = {**stamp, "name": name, "checkpoint_id": checkpoint_id}
    try:
        ids_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=ids_file.parent, prefix=".ids-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(ids, f, indent=1)
        os.replace(tmp, ids_file)
    except OSError:
        pass


class LazyModel:
    """A model by name or path whose ``name`` and ``checkpoint_id`` are known before the
    weights are loaded (when recorded earlier); ``load()`` loads it once.

    >>> model = LazyModel("/data/sam_hq_vit_b.pth", device="cpu")
    >>> model.name, model.checkpoint_id  # no torch import if recorded before
    >>> predictor = SamHQPredictor(model.load())
    """

    def __init__(
        self, name_or_path: str | Path, *, device: str = "auto", dtype: Any = None, progress: Progress | None = None
    ) -> None:
        self.source = str(name_or_path)
        self.device, self.dtype, self._progress = device, dtype, progress
        self._model: SamHQ | None = None
        self._identity: tuple[str, str] | None = None
        path = checkpoint_path(name_or_path, download=False)  # a registry model is not fetched yet
        if path is not None:
            self._identity = known_identity(path)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def identity_known(self) -> bool:
        """Whether ``name`` and ``checkpoint_id`` are known without loading the weights."""
        return self._identity is not None

    @property
    def name(self) -> str:
        return self._identity[0] if self._identity else self.load().name

    @property
    def checkpoint_id(self) -> str:
        return self._identity[1] if self._identity else self.load().checkpoint_id

    def load(self) -> SamHQ:
        """The model, loaded on the first call (``load_model``'s errors on a bad checkpoint)."""
        if self._model is None:
            from .load import load_model

            model = load_model(self.source, self.device, dtype=self.dtype, progress=self._progress)
            path = checkpoint_path(self.source, download=False)
            if path is not None and path.is_file():
                record_identity(path, model.name, model.checkpoint_id)
            self._model, self._identity = model, (model.name, model.checkpoint_id)
        return self._model
