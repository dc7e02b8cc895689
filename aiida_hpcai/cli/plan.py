"""``aiida-hpcai plan``: turn a request into the Goal the coordinate pattern works towards.

Needs no profile: planning reads text only (and, with ``--planner llm``, asks an endpoint).
"""

from __future__ import annotations

import json

import click

from . import cli


@cli.command('plan')
@click.argument('request')
@click.option(
    '--planner',
    type=click.Choice(['rules', 'llm']),
    default='rules',
    show_default=True,
    help='rules: the deterministic planner (no network); llm: an OpenAI-compatible endpoint '
    '(HPCAI_LLM_BASE_URL, HPCAI_LLM_MODEL, HPCAI_LLM_API_KEY).',
)
@click.option('--json', 'as_json', is_flag=True, help='Print the Goal (or the error) as JSON.')
def plan(request, planner, as_json):
    """Read REQUEST (one quoted sentence) into a Goal and print it.

    Example: aiida-hpcai plan "up to 50 Fe2O3 structures with a formation energy below 1 eV/atom" --json

    A request the planner cannot read entirely (an unknown element or word, a count of zero,
    contradictory bounds, no materials request at all) exits with status 1 and says why.
    """
    from aiida_hpcai.agent.goal import PROPERTY_UNITS, PlanError
    from aiida_hpcai.agent.planner import plan as plan_text

    try:
        goal = plan_text(request, planner)
    except PlanError as error:
        if as_json:
            click.echo(json.dumps(error.as_dict(), indent=2))
        else:
            unparsed = f' (unparsed: {" ".join(error.unparsed)})' if error.unparsed else ''
            click.echo(f'Error: {error.message}{unparsed}', err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(goal.model_dump_json(indent=2))
        return
    rows = []
    for name in ('composition', 'chemsys', 'must_include', 'exclude', 'count', 'spacegroup', 'crystal_system'):
        value = getattr(goal, name)
        if value:
            rows.append((name, ', '.join(value) if isinstance(value, list) else str(value)))
    for name, (low, high) in goal.bounds.items():
        low_text = 'any' if low is None else f'{low:g}'
        high_text = 'any' if high is None else f'{high:g}'
        rows.append((name, f'{low_text} to {high_text} {PROPERTY_UNITS[name]}'))
    if goal.objective:
        rows.append(('objective', ' '.join(goal.objective)))
    rows.append(('dft_budget', str(goal.dft_budget)))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f'{name:<{width}}  {value}')
