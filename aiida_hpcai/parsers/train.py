"""``hpcai.train`` parser: checkpoint + metadata -> ModelData, metrics -> Dict, PNGs -> FolderData."""

from __future__ import annotations

import io

from aiida import orm

from aiida_hpcai.data.model import ModelData

from .base import ModelProgramParser

__all__ = ('TrainParser',)

PLOT_FILES = ('learning_curve.png', 'parity.png')
METADATA_KEYS = ('architecture', 'hyperparameters', 'target', 'units', 'metrics')


class TrainParser(ModelProgramParser):
    """Attach ``model`` (ModelData), ``metrics`` (Dict) and, where written, ``plots`` (FolderData)."""

    def parse_outputs(self):
        checkpoint = self.read_bytes('model.pt')
        try:
            metadata = self.read_json('metadata.json')
            metrics = self.read_json('metrics.json')
        except ValueError as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.format(
                filename='metadata.json/metrics.json', exception=exc
            )
        missing = [key for key in METADATA_KEYS if key not in metadata]
        if missing:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(message=f'metadata.json lacks {missing}')
        requested_target = self.node.inputs.parameters.get('target')
        if metadata['target'] != requested_target:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(
                message=f'trained on {metadata["target"]!r}, but {requested_target!r} was requested'
            )

        model = ModelData(
            checkpoint,
            filename='model.pt',
            architecture=metadata['architecture'],
            hyperparameters=metadata['hyperparameters'],
            target=metadata['target'],
            units=metadata['units'],
            metrics=metadata['metrics'],
            training_set_uuid=self.node.inputs.structures.uuid,
        )
        self.out('model', model)
        self.out('metrics', orm.Dict(metrics))

        plots = [name for name in PLOT_FILES if self.has_output(name)]
        if plots:
            folder = orm.FolderData()
            for name in plots:
                folder.base.repository.put_object_from_filelike(io.BytesIO(self.read_bytes(name)), name)
            self.out('plots', folder)
        return None
