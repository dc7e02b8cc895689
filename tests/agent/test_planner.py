"""The deterministic planner: a golden set of requests and their Goals, the refusals, the Goal's own checks."""

import json
import pathlib
import random

import pytest

from aiida_hpcai.agent.goal import DEFAULT_DFT_BUDGET, Goal, PlanError, goal_from_dict, spacegroup_number
from aiida_hpcai.agent.planner import plan, plan_request, tokenize

GOLDEN = json.loads((pathlib.Path(__file__).parent / 'golden_requests.json').read_text())


def rounded(value):
    """Floats to 9 decimals, so that converted units compare without float noise."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, list):
        return [rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value


def test_golden_set_is_large_and_distinct():
    assert len(GOLDEN) >= 40
    assert len({case['request'] for case in GOLDEN}) == len(GOLDEN)


@pytest.mark.parametrize('case', GOLDEN, ids=[case['request'][:60] for case in GOLDEN])
def test_golden_request(case):
    expected = {**Goal().model_dump(mode='json'), **case['goal']}
    assert rounded(plan_request(case['request']).model_dump(mode='json')) == rounded(expected)


def test_paper_request_as_json():
    goal = plan('Please generate up to 50 structures of Fe2O3 materials with a formation energy of less than 1 eV/atom')
    assert json.loads(goal.model_dump_json()) == {
        'composition': 'Fe2O3',
        'chemsys': None,
        'must_include': [],
        'exclude': [],
        'count': 50,
        'bounds': {'formation_energy_per_atom': [None, 1.0]},
        'spacegroup': None,
        'crystal_system': None,
        'objective': None,
        'dft_budget': DEFAULT_DFT_BUDGET,
    }


@pytest.mark.parametrize(
    'request_text, message, unparsed',
    [
        ('structures of Xx2O3', 'unknown element Xx', ['Xx2O3']),
        ('compounds containing Xx and O', 'unknown element Xx', ['Xx']),
        ('Fe2O3 and Xx', 'unknown element Xx', ['Xx']),
        ('0 structures of Fe2O3', 'whole number above zero, not 0', ['0']),
        ('-3 structures of Fe2O3', 'whole number above zero, not -3', ['-3']),
        ('2.5 structures of Fe2O3', 'whole number above zero, not 2.5', ['2.5']),
        ('zero structures of Fe2O3', 'whole number above zero', ['zero']),
        ('Fe2O3 with a band gap above 3 eV and below 1 eV', 'contradictory bounds on band_gap', []),
        ('metallic Fe2O3 with a band gap above 1 eV', 'contradictory bounds on band_gap', []),
        ('hello world', 'cannot place', ['hello', 'world']),
        ('make it shiny', 'cannot place', ['shiny']),
        ('', 'empty', []),
        ('please find some materials', 'no materials request', []),
        ('with a DFT budget of 3', 'no materials request', []),
        ('stable semiconducting GaAs', 'cannot place', ['semiconducting']),
        ('non-metallic Fe2O3', 'cannot place', ['non']),
        ('Fe2O3 or Fe3O4', 'two values of composition', ['Fe3O4']),
        ('band gap of 1.5 eV', 'exact band_gap', ['band', 'gap', 'of', '1.5', 'eV']),
        ('Fe2O3 with a band gap', 'say what the band_gap should be', ['band', 'gap']),
        ('MgO with a formation energy below -1 eV', 'not in eV', ['formation', 'energy', 'below', '-1', 'eV']),
        ('MgO with a band gap below 1 eV/atom', 'not in eV/atom', ['band', 'gap', 'below', '1', 'eV/atom']),
        ('MgO with a band gap below -1 eV', 'never negative', []),
        ('Fe2O3 in space group 231', 'spacegroup', []),
        ('Fe2O3 in space group Qq-3', 'unknown space group', ['Qq-3']),
        ('a tetragonal NaCl in space group 225', 'space group 225 is cubic, not tetragonal', []),
        ('Fe2O3 without Fe', 'Fe2O3 contains excluded Fe', []),
        ('Li-Fe-O compounds containing Mn', 'has no Mn', []),
        ('Fe2O3 with -2 DFT runs', 'whole number zero or more, not -2', ['-2', 'DFT']),
        ('Fe2O3 containing Li or Na', 'cannot place', ['or']),
        ('find 7 Fe2O3', 'cannot place', ['7']),
        ('metal oxides', 'cannot place', ['metal']),
        ('Fe2O3 @ 300 K', 'cannot place', ['@', '300']),
        ('Fe2O3 using DFT', 'cannot place', ['DFT']),
        ('materials like Fe2O3', 'cannot place', ['like']),
        ('structures different from Fe2O3', 'cannot place', ['from']),
        ('band gap below 1e400 eV', 'cannot place', ['e400', 'eV']),
        ('band gap below ' + '9' * 400 + '.5 eV', 'too large', None),
    ],
)
def test_refusals(request_text, message, unparsed):
    with pytest.raises(PlanError) as info:
        plan_request(request_text)
    assert message in info.value.message
    if unparsed is not None:
        assert info.value.unparsed == unparsed
    assert info.value.as_dict() == {'error': {'message': info.value.message, 'unparsed': info.value.unparsed}}


def test_words_that_are_also_elements():
    """ "In", "I" and "No" open sentences as words; after "containing" they are elements."""
    assert plan_request('In space group 225, find NaCl').spacegroup == 225
    assert plan_request('I need ZnO').composition == 'ZnO'
    assert plan_request('No cobalt, containing In and Ga').model_dump(include={'must_include', 'exclude'}) == {
        'must_include': ['Ga', 'In'],
        'exclude': ['Co'],
    }


def test_tokenizer_keeps_chemistry_whole_and_cuts_other_hyphens():
    assert [token.raw for token in tokenize('Li-Fe-O, Fm-3m, P6_3/mmc; cobalt-free e_above_hull<0.05 meV/atom')] == [
        'Li-Fe-O',
        ',',
        'Fm-3m',
        ',',
        'P6_3/mmc',
        ';',
        'cobalt',
        'free',
        'e',
        'above',
        'hull',
        '<',
        '0.05',
        'meV/atom',
    ]
    assert [token.kind for token in tokenize('1-3 eV −0.5')] == ['range', 'word', 'number']


@pytest.mark.parametrize(
    'symbol, number', [('Fm-3m', 225), ('P6_3/mmc', 194), ('P63/mmc', 194), ('P2_1/c', 14), ('P21/c', 14), ('P1', 1)]
)
def test_spacegroup_symbols_from_spglib_tables(symbol, number):
    assert spacegroup_number(symbol) == number


def test_goal_normalises_what_it_is_given():
    goal = goal_from_dict(
        {
            'composition': 'Fe4O6',
            'chemsys': 'O-Fe',
            'must_include': ['O', 'Fe', 'O'],
            'spacegroup': 'R-3c',
            'crystal_system': 'Trigonal',
        }
    )
    assert (goal.composition, goal.chemsys, goal.must_include, goal.spacegroup, goal.crystal_system) == (
        'Fe2O3',
        'Fe-O',
        ['Fe', 'O'],
        167,
        'trigonal',
    )


@pytest.mark.parametrize(
    'data, message',
    [
        ({'composition': 'Fe0.5O'}, 'fractional'),
        ({'chemsys': 'Fe-Fe-O'}, 'names an element twice'),
        ({'count': 5.0}, 'count'),
        ({'count': True}, 'count'),
        ({'bounds': {'volume': [1, 2]}}, 'bounds'),
        ({'bounds': {'band_gap': [None, None]}}, 'neither a minimum nor a maximum'),
        ({'bounds': {'band_gap': [float('nan'), 1]}}, 'finite'),
        ({'objective': ['lowest', 'band_gap']}, 'objective'),
        ({'dft_budget': -1}, 'dft_budget'),
        ({'temperature': 300}, 'temperature'),
        ({'must_include': ['Fe'], 'exclude': ['Fe']}, 'both required and excluded'),
    ],
)
def test_goal_refuses(data, message):
    with pytest.raises(PlanError, match=message):
        goal_from_dict(data)


def test_unknown_planner_is_refused():
    with pytest.raises(PlanError, match='unknown planner'):
        plan('Fe2O3', planner='oracle')


def test_any_text_gives_a_goal_or_a_plan_error():
    """Random mixtures of the planner's own words, numbers and signs never raise anything but a PlanError."""
    words = sorted({word for case in GOLDEN for word in case['request'].split()})
    words += ['-3', '0', '2.5', '1-3', 'Xx', 'DFT', '9' * 400, 'or', 'only', 'within', '<', '≥', '#', '(', '—', 'K']
    rng = random.Random(0)
    planned = 0
    for _ in range(500):
        text = ' '.join(rng.choice(words) for _ in range(rng.randint(1, 10)))
        try:
            plan_request(text)
            planned += 1
        except PlanError:
            pass
    assert planned > 0


@pytest.mark.parametrize(
    'value, expected',
    [
        ('-1.2 eV/atom', -1.2),
        ('-1.2 eV per atom', -1.2),
        ('-1200 meV/atom', -1.2),
        ('-1200 meV / atom', -1.2),
        ('-96.485332 kJ/mol', -1.0),
        ('-96.485332 kJ/mol-atom', -1.0),
        ('-96.485332 kJ per mole', -1.0),
        ('-1.2', -1.2),
    ],
)
def test_formation_energy_units(value, expected):
    bounds = plan_request(f'MgO with a formation energy below {value}').bounds
    assert bounds['formation_energy_per_atom'] == (None, pytest.approx(expected, abs=1e-8))
