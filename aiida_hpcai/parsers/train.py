"""``hpcai.train`` parser: checkpoint + metadata -> ModelData, metrics -> Dict, PNGs -> FolderData."""

from __future__ import annotations

import io

from aiida import orm

from aiida_hpcai.data.model import ModelData
from aiida_hpcai.models.contract import (
    ARCHITECTURE_KEY,
    FIGURE_PATTERN,
    METADATA_FILE,
    METADATA_KEYS,
    METRICS_FILE,
    MODEL_FILE,
)

from .base import ModelProgramParser

__all__ = ('TrainParser',)


class TrainParser(ModelProgramParser):
    """Attach ``model`` (ModelData), ``metrics`` (Dict) and, where written, ``plots`` (FolderData)."""

    def parse_outputs(self):
        checkpoint = self.read_bytes(MODEL_FILE)
        try:
            metadata = self.read_json(METADATA_FILE)
            metrics = self.read_json(METRICS_FILE)
        except ValueError as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.format(
                filename=f'{METADATA_FILE}/{METRICS_FILE}', exception=exc
            )
        missing = [key for key in METADATA_KEYS if key not in metadata]
        if missing:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(message=f'metadata.json lacks {missing}')
        requested_target = self.node.inputs.parameters.get('target')
        if metadata['target'] != requested_target:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(
                message=f'trained on {metadata["target"]!r}, but {requested_target!r} was requested'
            )
        requested_architecture = self.node.inputs.parameters.get(ARCHITECTURE_KEY)
        if requested_architecture not in (None, metadata['architecture']):
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(
                message=f'trained a {metadata["architecture"]!r}, but {requested_architecture!r} was requested'
            )

        model = ModelData(
            checkpoint,
            filename=MODEL_FILE,
            architecture=metadata['architecture'],
            hyperparameters=metadata['hyperparameters'],
            target=metadata['target'],
            units=metadata['units'],
            metrics=metadata['metrics'],
            training_set_uuid=self.node.inputs.structures.uuid,
        )
        self.out('model', model)
        self.out('metrics', orm.Dict(metrics))

        plots = self.outputs_matching(FIGURE_PATTERN)
        if plots:
            folder = orm.FolderData()
            for name in plots:
                folder.base.repository.put_object_from_filelike(io.BytesIO(self.read_bytes(name)), name)
            self.out('plots', folder)
        return None
