"""``hpcai.generate`` parser: ``structures.npz`` + ``invalid.json`` -> StructureSet, ``summary.json`` -> Dict."""

from __future__ import annotations

import io

from aiida import orm

from aiida_hpcai.data.structure_set import StructureSet
from aiida_hpcai.models.contract import INVALID_FILE, STRUCTURES_FILE, SUMMARY_FILE
from aiida_hpcai.models.structure_io import read_npz

from .base import ModelProgramParser

__all__ = ('GenerateParser',)

# the summary's entries recorded as attributes of the generated set, so that a query finds them
RECORDED = ('mode', 'seed', 'steps')


class GenerateParser(ModelProgramParser):
    """Attach ``structures`` (the valid samples; the invalid ones as its skipped records) and ``summary``.

    With ``ERROR_NAN_OUTPUT`` (some samples went NaN) the outputs are attached all the same: the
    other samples are kept and the NaN ones are listed with the reason ``nan``.
    """

    def keeps_outputs_on_error(self, exit_code):
        return exit_code.status == self.exit_codes.ERROR_NAN_OUTPUT.status

    def parse_outputs(self):
        summary = self.read_json(SUMMARY_FILE)
        invalid = self.read_json(INVALID_FILE)
        content = self.read_bytes(STRUCTURES_FILE)
        try:
            arrays = read_npz(io.BytesIO(content))
            skipped = [{'id': row['id'], 'reason': row['reason'], 'detail': row.get('message', '')} for row in invalid]
        except (ValueError, KeyError, TypeError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.format(
                filename=f'{STRUCTURES_FILE}/{INVALID_FILE}', exception=exc
            )
        counted = (summary.get('n_valid'), summary.get('n_invalid'))
        if counted != (len(arrays), len(skipped)):
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(
                message=f'summary.json counts (valid, invalid) {counted}, the files hold {(len(arrays), len(skipped))}'
            )

        structures = StructureSet(arrays, skipped=skipped)
        structures.base.attributes.set_many({key: summary.get(key) for key in RECORDED})
        self.out('structures', structures)
        self.out('summary', orm.Dict(summary))
        if skipped:
            self.logger.warning(
                f'{len(skipped)} of {len(arrays) + len(skipped)} samples are not crystals; see '
                '`structures.get_skipped()` for their reasons'
            )
        return None
