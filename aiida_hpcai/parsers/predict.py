"""``hpcai.predict`` parser: ``predictions.npz`` -> ArrayData, ``summary.json`` -> Dict."""

from __future__ import annotations

import io

import numpy as np
from aiida import orm

from aiida_hpcai.models.contract import PREDICTION_ARRAYS, PREDICTIONS_FILE, STATUS_FAILED, STATUS_OK, SUMMARY_FILE

from .base import ModelProgramParser

__all__ = ('PredictParser',)


class PredictParser(ModelProgramParser):
    """Attach ``predictions`` (mean, sigma, status, reason; aligned with the input set) and ``summary``.

    Per-structure failures are data, not a job failure: they are recorded in ``status``/``reason``.
    When no structure at all could be predicted (every one invalid for the model) the job exits with
    ``ERROR_NO_STRUCTURE_PREDICTED`` and the outputs are attached all the same, so that the reasons can
    be read and every structure sent to DFT. An error the program reported in ``error.json`` (out of
    memory, NaN from the model for every structure it evaluated, a corrupt checkpoint, a crash) is the
    job's exit code, with no outputs.
    """

    def parse_outputs(self):
        content = self.read_bytes(PREDICTIONS_FILE)
        summary = self.read_json(SUMMARY_FILE)
        try:
            with np.load(io.BytesIO(content), allow_pickle=False) as data:
                arrays = {name: data[name] for name in PREDICTION_ARRAYS}
        except (ValueError, KeyError, OSError) as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.format(filename=PREDICTIONS_FILE, exception=exc)

        expected = self.node.inputs.structures.count
        lengths = {name: len(values) for name, values in arrays.items()}
        if set(lengths.values()) != {expected}:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(
                message=f'prediction arrays have lengths {lengths}, the structure set has {expected} structures'
            )
        status = arrays['status'].astype(str)
        unknown = sorted(set(status.tolist()) - {STATUS_OK, STATUS_FAILED})
        if unknown:
            return self.exit_codes.ERROR_OUTPUT_INCONSISTENT.format(message=f'unknown status values {unknown}')

        predictions = orm.ArrayData()
        predictions.set_array('mean', arrays['mean'].astype(np.float64))
        predictions.set_array('sigma', arrays['sigma'].astype(np.float64))
        predictions.set_array('status', status)
        predictions.set_array('reason', arrays['reason'].astype(str))
        # Queryable without opening the arrays.
        n_ok = int((status == STATUS_OK).sum())
        predictions.base.attributes.set_many(
            {
                'target': summary.get('target'),
                'units': summary.get('units'),
                'n_structures': expected,
                'n_ok': n_ok,
                'n_failed': expected - n_ok,
            }
        )
        self.out('predictions', predictions)
        self.out('summary', orm.Dict(summary))

        requested_device = self.node.inputs.device.value if 'device' in self.node.inputs else 'cpu'
        if summary.get('device') and summary['device'] != requested_device:
            self.logger.warning(f'requested device {requested_device!r}, but the program ran on {summary["device"]!r}')

        if expected and n_ok == 0:
            reasons = sorted(set(arrays['reason'].astype(str).tolist()))[:3]
            return self.exit_codes.ERROR_NO_STRUCTURE_PREDICTED.format(n_structures=expected, reasons=reasons)
        if n_ok < expected:
            self.logger.warning(
                f'{expected - n_ok} of {expected} structures could not be predicted; '
                'see the `status` and `reason` arrays of the `predictions` output'
            )
        return None
