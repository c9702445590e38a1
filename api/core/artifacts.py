"""The artifact store: uploads, datasets, checkpoints, models and indexes under one local root; every path
derives from a resource id, so another store can replace it behind the same methods."""

from __future__ import annotations

import shutil
from pathlib import Path


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def upload_path(self, dataset_id: str, suffix: str) -> Path:
        return self._dir("uploads", dataset_id) / f"source{suffix}"

    def staging_dir(self) -> Path:
        return self._dir("staging")

    def dataset_dir(self, dataset_id: str) -> Path:
        """Where the decoded array lives (``ImageArray.save`` writes it atomically)."""
        return self._dir("datasets") / dataset_id

    def checkpoint_path(self, job_id: str) -> Path:
        return self._dir("jobs", job_id) / "checkpoint.pt"

    def model_path(self, model_id: str) -> Path:
        return self._dir("models", model_id) / "model.pt"

    def has_model(self, model_id: str) -> bool:
        """Whether the model's file is stored (it is gone once the model is deleted)."""
        return (self.root / "models" / model_id / "model.pt").is_file()

    def export_path(self, model_id: str, filename: str) -> Path:
        """A model's cached export (``ssl_core.export``), built once per format and target; removed with the
        model."""
        return self._dir("models", model_id, "exports") / filename

    def features_path(self, model_id: str, dataset_id: str) -> Path:
        """A model's cached features of a dataset's images (removed with the model)."""
        return self._dir("models", model_id, "features") / f"{dataset_id}.npy"

    def embeddings_dir(self, job_id: str) -> Path:
        """An embed job's results (outside ``jobs/``, whose files go when the job ends)."""
        return self._dir("embeddings", job_id)

    def index_dir(self, index_id: str) -> Path:
        return self._dir("indexes", index_id)

    def remove_dataset(self, dataset_id: str) -> None:
        for part in ("uploads", "datasets"):
            shutil.rmtree(self.root / part / dataset_id, ignore_errors=True)
            for staging in (self.root / part).glob(f"{dataset_id}.tmp*"):  # ``ssl_core.data.staging_dir``
                shutil.rmtree(staging, ignore_errors=True)

    def remove_model(self, model_id: str) -> None:
        """A model's file with its cached exports and features."""
        shutil.rmtree(self.root / "models" / model_id, ignore_errors=True)

    def remove_index(self, index_id: str) -> None:
        shutil.rmtree(self.root / "indexes" / index_id, ignore_errors=True)

    def remove_embeddings(self, job_id: str) -> None:
        shutil.rmtree(self.root / "embeddings" / job_id, ignore_errors=True)

    def remove_tree(self, path: Path) -> None:
        """Remove a directory this store handed out (a model's or an index's), refusing any path outside it."""
        if not Path(path).resolve().is_relative_to(self.root.resolve()):
            raise ValueError(f"{path} is not inside the artifact store {self.root}")
        shutil.rmtree(path, ignore_errors=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.root / "jobs" / job_id, ignore_errors=True)
