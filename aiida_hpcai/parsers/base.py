"""What the parsers of ``hpcai-model`` jobs share: finding output files and reading ``error.json`` first."""

from __future__ import annotations

import fnmatch
import json
import math
import pathlib

from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_hpcai.models.contract import ERROR_FILE, PROGRAM_ERRORS

# the program's error codes (`error.json`) -> the exit code label of the CalcJob
EXIT_LABELS = {error.code: error.exit_label for error in PROGRAM_ERRORS}


def finite_or_none(value):
    """``value`` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


class OutputFileMissing(Exception):
    """Raised by :meth:`ModelProgramParser.read_bytes` for a file the job did not produce."""

    def __init__(self, filename: str):
        super().__init__(filename)
        self.filename = filename


class ModelProgramParser(Parser):
    """Base parser: subclasses implement :meth:`parse_outputs`, called when the program reported no error."""

    def parse(self, retrieved_temporary_folder: str | None = None, **kwargs):
        self._temporary = pathlib.Path(retrieved_temporary_folder) if retrieved_temporary_folder else None

        exit_code = self.exit_code_from_error_file()
        if exit_code is not None:
            if self.keeps_outputs_on_error(exit_code):
                try:
                    self.parse_outputs()
                except OutputFileMissing:
                    pass
            return exit_code
        try:
            return self.parse_outputs()
        except OutputFileMissing as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_MISSING.format(filename=exc.filename)

    def parse_outputs(self) -> ExitCode | None:
        raise NotImplementedError

    def keeps_outputs_on_error(self, exit_code: ExitCode) -> bool:
        """Whether outputs the program wrote before reporting this error are still worth attaching."""
        return False

    # -- files ------------------------------------------------------------------------------
    def has_output(self, filename: str) -> bool:
        if self._temporary is not None and (self._temporary / filename).is_file():
            return True
        return filename in self.retrieved.base.repository.list_object_names()

    def outputs_matching(self, pattern: str) -> list[str]:
        """Names of the output files that match a glob ``pattern``, sorted."""
        names = set(self.retrieved.base.repository.list_object_names())
        if self._temporary is not None and self._temporary.is_dir():
            names.update(path.name for path in self._temporary.iterdir() if path.is_file())
        return sorted(fnmatch.filter(names, pattern))

    def read_bytes(self, filename: str) -> bytes:
        """Content of an output file, from the temporary retrieved folder or the ``retrieved`` node."""
        if self._temporary is not None and (self._temporary / filename).is_file():
            return (self._temporary / filename).read_bytes()
        if filename in self.retrieved.base.repository.list_object_names():
            return self.retrieved.base.repository.get_object_content(filename, mode='rb')
        raise OutputFileMissing(filename)

    def read_json(self, filename: str):
        """The parsed JSON file, with NaN and infinities (which the database refuses) replaced by None."""
        return finite_or_none(json.loads(self.read_bytes(filename)))

    # -- errors -----------------------------------------------------------------------------
    def exit_code_from_error_file(self) -> ExitCode | None:
        """Map the program's ``error.json`` (if any) to this CalcJob's exit code."""
        if not self.has_output(ERROR_FILE):
            return None
        try:
            error = self.read_json(ERROR_FILE)
            code, message = error['error'], error.get('message', '')
        except (ValueError, KeyError, TypeError) as exc:
            return self.exit_codes.ERROR_OUTPUT_FILES_UNREADABLE.format(filename=ERROR_FILE, exception=exc)
        self.logger.error(f'hpcai-model reported `{code}`: {message}')
        label = EXIT_LABELS.get(code)
        if label is None or label not in self.exit_codes:
            return self.exit_codes.ERROR_PROGRAM_UNKNOWN_ERROR.format(code=code, message=message)
        return self.exit_codes[label].format(message=message)
