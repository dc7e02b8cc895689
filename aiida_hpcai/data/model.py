"""``hpcai.model``: one trained model checkpoint plus what it is and how it was made."""

from __future__ import annotations

import hashlib
import io
import pathlib

from aiida import orm

__all__ = ('ModelData', 'ChecksumMismatchError')


class ChecksumMismatchError(ValueError):
    """The stored checkpoint bytes no longer match the sha256 recorded at creation."""


def sha256_of_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class ModelData(orm.SinglefileData):
    """A checkpoint file with attributes ``architecture``, ``sha256``, ``hyperparameters``,
    ``target``, ``units``, ``training_set_uuid`` and ``metrics``.

    Use :meth:`get_or_create` to upload: the same bytes uploaded twice give back the stored node,
    so a shipped pretrained model and a re-import of it are one node in the provenance graph.
    """

    def __init__(
        self,
        file,
        filename: str | None = None,
        architecture: str = 'unknown',
        hyperparameters: dict | None = None,
        target: str | None = None,
        units: str | None = None,
        training_set_uuid: str | None = None,
        metrics: dict | None = None,
        **kwargs,
    ):
        content = _read_bytes(file)
        if filename is None and isinstance(file, (str, pathlib.Path)):
            filename = pathlib.Path(file).name
        super().__init__(io.BytesIO(content), filename=filename or 'model.pt', **kwargs)
        self.base.attributes.set_many(
            {
                'sha256': sha256_of_bytes(content),
                'architecture': architecture,
                'hyperparameters': hyperparameters or {},
                'target': target,
                'units': units,
                'training_set_uuid': training_set_uuid,
                'metrics': metrics or {},
            }
        )

    @classmethod
    def get_or_create(cls, file, **kwargs) -> tuple[ModelData, bool]:
        """Return ``(node, created)``: the stored node with these exact bytes, or a new stored one."""
        content = _read_bytes(file)
        existing = cls.find_by_sha256(sha256_of_bytes(content))
        if existing is not None:
            return existing, False
        if isinstance(file, (str, pathlib.Path)):
            kwargs.setdefault('filename', pathlib.Path(file).name)
        return cls(content, **kwargs).store(), True

    @classmethod
    def find_by_sha256(cls, sha256: str) -> ModelData | None:
        query = orm.QueryBuilder().append(cls, filters={'attributes.sha256': sha256}, project='*')
        query.order_by({cls: {'id': 'asc'}}).limit(1)
        result = query.first()
        return result[0] if result else None

    @property
    def sha256(self) -> str:
        return self.base.attributes.get('sha256')

    @property
    def architecture(self) -> str:
        return self.base.attributes.get('architecture')

    @property
    def target(self) -> str | None:
        return self.base.attributes.get('target')

    @property
    def units(self) -> str | None:
        return self.base.attributes.get('units')

    @property
    def hyperparameters(self) -> dict:
        return self.base.attributes.get('hyperparameters')

    @property
    def metrics(self) -> dict:
        return self.base.attributes.get('metrics')

    @property
    def training_set_uuid(self) -> str | None:
        return self.base.attributes.get('training_set_uuid')

    def get_verified_content(self) -> bytes:
        """The checkpoint bytes, after checking them against the recorded sha256."""
        content = self.get_content(mode='rb')
        actual = sha256_of_bytes(content)
        if actual != self.sha256:
            raise ChecksumMismatchError(
                f'ModelData<{self.pk}>: checkpoint sha256 {actual} does not match the recorded {self.sha256}'
            )
        return content

    def export(self, path) -> pathlib.Path:
        """Write the verified checkpoint to ``path`` (a file or a folder) and return the file path."""
        path = pathlib.Path(path)
        if path.is_dir():
            path = path / self.filename
        path.write_bytes(self.get_verified_content())
        return path


def _read_bytes(file) -> bytes:
    if isinstance(file, bytes):
        return file
    if isinstance(file, (str, pathlib.Path)):
        return pathlib.Path(file).read_bytes()
    return file.read()
