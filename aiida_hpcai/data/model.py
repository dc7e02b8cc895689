"""``hpcai.model``: one trained model checkpoint plus what it is and how it was made."""

from __future__ import annotations

import hashlib
import io
import pathlib

from aiida import orm

from aiida_hpcai.models.contract import MODEL_FILE

__all__ = ('ModelData', 'ChecksumMismatchError')

# what a checkpoint is, recorded as attributes; the first three also tell nodes of the same bytes apart
LABELS = ('architecture', 'target', 'units', 'hyperparameters', 'metrics')
DISTINCT_LABELS = ('architecture', 'target', 'units')
UNKNOWN_ARCHITECTURE = 'unknown'


class ChecksumMismatchError(ValueError):
    """The stored checkpoint bytes no longer match the sha256 recorded at creation."""


def sha256_of_bytes(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class ModelData(orm.SinglefileData):
    """A checkpoint file with attributes ``architecture``, ``sha256``, ``hyperparameters``,
    ``target``, ``units``, ``training_set_uuid`` and ``metrics``.

    The attributes of a shipped pretrained model come from the JSON record beside it, however its
    file is given (:meth:`pretrained`, :meth:`get_or_create` or the constructor with its path); a
    label that contradicts the record is refused. Use :meth:`get_or_create` to upload: the same
    bytes uploaded twice give back the stored node, so a shipped pretrained model and a re-import of
    it are one node in the provenance graph.
    """

    def __init__(
        self,
        file,
        filename: str | None = None,
        architecture: str | None = None,
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
        sha256 = sha256_of_bytes(content)
        labels = _labels(
            sha256,
            {
                'architecture': architecture,
                'hyperparameters': hyperparameters,
                'target': target,
                'units': units,
                'metrics': metrics,
            },
        )
        super().__init__(io.BytesIO(content), filename=filename or MODEL_FILE, **kwargs)
        self.base.attributes.set_many(
            {
                'sha256': sha256,
                'architecture': labels.get('architecture', UNKNOWN_ARCHITECTURE),
                'hyperparameters': labels.get('hyperparameters', {}),
                'target': labels.get('target'),
                'units': labels.get('units'),
                'training_set_uuid': training_set_uuid,
                'metrics': labels.get('metrics', {}),
            }
        )
        if not self.label:  # what `verdi node graph` shows in the box
            self.label = f'{self.architecture} {self.target or "(no target)"}'

    @classmethod
    def get_or_create(cls, file, **kwargs) -> tuple[ModelData, bool]:
        """Return ``(node, created)``: the stored node with these exact bytes and the labels given (or recorded
        for a shipped model), or a new stored one. A node of the same bytes labelled otherwise is not reused."""
        content = _read_bytes(file)
        if isinstance(file, (str, pathlib.Path)):
            kwargs.setdefault('filename', pathlib.Path(file).name)
        sha256 = sha256_of_bytes(content)
        given = {key: kwargs.get(key) for key in LABELS}
        labels = _labels(sha256, given)
        existing = cls.find_by_sha256(sha256, **{key: labels[key] for key in DISTINCT_LABELS if key in labels})
        if existing is not None:
            return existing, False
        return cls(content, **kwargs).store(), True

    @classmethod
    def find_by_sha256(cls, sha256: str, **attributes) -> ModelData | None:
        """The first stored node with these bytes (and these attribute values, where given), or None."""
        # a None value (a generator has no target) is compared here: SQLite's JSON filters cannot ask `== None`
        filters = {'attributes.sha256': sha256}
        filters.update({f'attributes.{key}': value for key, value in attributes.items() if value is not None})
        query = orm.QueryBuilder().append(cls, filters=filters, project='*')
        query.order_by({cls: {'id': 'asc'}})
        for (node,) in query.iterall():
            if all(node.base.attributes.get(key) == value for key, value in attributes.items()):
                return node
        return None

    @classmethod
    def pretrained(cls, target: str = 'formation_energy_per_atom') -> ModelData:
        """The pretrained model shipped for ``target`` (a surrogate's target, or a generator's key such as
        ``equicsp_mp20``) as ONE stored node (the same node on every call), labelled from its JSON record.
        ``KeyError`` for a target without one, ``FileNotFoundError`` if it is missing."""
        from aiida_hpcai.models.checkpoint import pretrained_path, pretrained_record

        node, _ = cls.get_or_create(pretrained_path(target))
        expected = pretrained_record(target).get('target')  # None for a generator
        if node.target != expected:
            raise ValueError(f'the shipped model for {target!r} has no matching record (it says {node.target!r})')
        return node

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


def _labels(sha256: str, given: dict) -> dict:
    """The labels given (None: not given), completed from the record if these bytes are a shipped model's."""
    from aiida_hpcai.models.checkpoint import shipped_record

    labels = {key: value for key, value in given.items() if value not in (None, {})}
    record = shipped_record(sha256)
    if record is None:
        return labels
    for key in LABELS:
        if key in labels and labels[key] != record.get(key):
            raise ValueError(f"{key} {labels[key]!r} contradicts the shipped model's record ({record.get(key)!r})")
        labels[key] = record.get(key)
    return labels


def _read_bytes(file) -> bytes:
    if isinstance(file, bytes):
        return file
    if isinstance(file, (str, pathlib.Path)):
        return pathlib.Path(file).read_bytes()
    return file.read()
