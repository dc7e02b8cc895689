"""``hpcai-exit-codes``: the exit codes of a process, as a table read from its spec.

aiida-core's ``aiida-calcjob`` / ``aiida-workchain`` directives document inputs, outputs and the
outline but not the exit codes, so this directive renders them from the same source, the spec:

    ```{hpcai-exit-codes} aiida_hpcai.calculations.train.TrainCalculation
    ```

Columns: status, label, message, and the class that defines the code (``Process`` and ``CalcJob``
are aiida-core's own). Backquoted words in messages become literals; ``{placeholders}`` are kept.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _defining_class(process_class, label: str) -> type:
    """The most basic class of the MRO whose spec already has ``label``."""
    from aiida.engine import Process

    for klass in reversed(process_class.__mro__):
        if isinstance(klass, type) and issubclass(klass, Process) and label in klass.spec().exit_codes:
            return klass
    return process_class


def _inline(text: str) -> list[nodes.Node]:
    parts = text.split('`')
    if len(parts) % 2 == 0:  # an unpaired backquote: keep the text as it is
        return [nodes.Text(text)]
    return [nodes.literal(part, part) if index % 2 else nodes.Text(part) for index, part in enumerate(parts) if part]


class ExitCodesDirective(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        from aiida.common.utils import get_object_from_string
        from aiida.manage.configuration import load_profile

        load_profile()
        process_class = get_object_from_string(self.arguments[0])
        rows = []
        exit_codes = sorted(process_class.spec().exit_codes.items(), key=lambda item: item[1].status)
        for label, exit_code in exit_codes:
            origin = _defining_class(process_class, label)
            rows.append(
                [
                    [nodes.Text(str(exit_code.status))],
                    [nodes.literal(label, label)],
                    _inline(exit_code.message),
                    [nodes.Text(origin.__name__)],
                ]
            )
        return [self._table(['status', 'label', 'message', 'defined by'], rows, widths=[8, 30, 50, 20])]

    @staticmethod
    def _table(header, rows, widths):
        table = nodes.table(classes=['hpcai-exit-codes'])
        group = nodes.tgroup(cols=len(header))
        table += group
        group.extend(nodes.colspec(colwidth=width) for width in widths)

        def row_node(cells):
            row = nodes.row()
            for content in cells:
                entry = nodes.entry()
                entry += nodes.paragraph('', '', *content)
                row += entry
            return row

        head = nodes.thead()
        head += row_node([[nodes.Text(title)] for title in header])
        body = nodes.tbody()
        body.extend(row_node(cells) for cells in rows)
        group += head
        group += body
        return table


def setup(app):
    app.add_directive('hpcai-exit-codes', ExitCodesDirective)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
