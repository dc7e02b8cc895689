"""The deterministic planner: request text -> :class:`~aiida_hpcai.agent.goal.Goal`, without network.

A small tokenizer cuts the text into words, numbers and comparison signs; an ordered list of rules
then reads the tokens left to right. Each rule recognises one kind of phrase (a DFT budget, an
objective, a property bound, stability, space group, crystal system, element lists, a formula or
chemical system, a count) and records it; a word no rule places and that is not a filler word
("please", "find", "the", ...) is unparsed, and any unparsed word refuses the whole request: the
planner never guesses. The grammar is documented in docs/source/planner.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

from .goal import (
    CRYSTAL_SYSTEMS,
    NON_NEGATIVE_PROPERTIES,
    PROPERTY_UNITS,
    PlanError,
    element_symbols,
    goal_from_dict,
    kj_per_mol_per_ev,
    reduced_formula,
    spacegroup_number,
)

# ---------------------------------------------------------------------------------------------- vocabulary


def _phrases(text: str) -> list[tuple[str, ...]]:
    """``'less than | below'`` -> ``[('less', 'than'), ('below',)]``: phrases as the lower-case words they match."""
    return [tuple(phrase.split()) for phrase in text.split('|')]


# Words that carry no request of their own. Anything else must be placed by a rule.
FILLER = frozenset(
    """please kindly can could would will you i i'd i'm am we we'd let's me us my our want need find search look
    looking for generate give get show list return make create produce design discover propose suggest predict
    identify some several any all a an the of with that which whose where what are is be been being have has to
    and , ; it them they their its these those this also each every should must new novel distinct different
    unique possible hypothetical crystalline inorganic in on at as system systems chemical crystal symmetry
    lattice thermodynamically energetically structure structures compound compounds material materials crystals
    candidate candidates phase phases polymorph polymorphs result results entry entries solid solids ones
    example examples option options solution solutions using use allow allowing run running perform spend""".split()
)
# Fillers of more than one word: "I would like", but not "like" alone ("materials like Fe2O3" is no request
# for Fe2O3); "from the Fe-O system", but not "from" alone ("different from Fe2O3").
FILLER_PHRASES = _phrases("would like | i'd like | we'd like | like to | from the")
# Nouns a count can count (``10 stable oxides``): the filler nouns above plus the anion classes below.
MATERIAL_NOUNS = frozenset(
    """structure structures compound compounds material materials crystal crystals candidate candidates phase
    phases polymorph polymorphs result results entry entries solid solids ones example examples option options
    solution solutions metals""".split()
)
# Words that may stand between a count and its noun (``5 new stable cubic Fe2O3 structures``).
COUNT_ADJECTIVES = frozenset(
    """new novel distinct different unique possible hypothetical crystalline inorganic stable metallic most
    thermodynamically candidate more additional free containing bearing based""".split()
)
NUMBER_WORDS = {
    word: value
    for value, word in enumerate(
        'zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen '
        'seventeen eighteen nineteen twenty'.split()
    )
} | {'thirty': 30, 'forty': 40, 'fifty': 50, 'hundred': 100}
ANION_CLASSES = {
    'hydride': 'H',
    'boride': 'B',
    'carbide': 'C',
    'nitride': 'N',
    'oxide': 'O',
    'fluoride': 'F',
    'silicide': 'Si',
    'phosphide': 'P',
    'sulfide': 'S',
    'sulphide': 'S',
    'chloride': 'Cl',
    'arsenide': 'As',
    'selenide': 'Se',
    'bromide': 'Br',
    'telluride': 'Te',
    'iodide': 'I',
}
ELEMENT_NAME_ALIASES = {'aluminium': 'Al', 'caesium': 'Cs', 'sulphur': 'S'}


PROPERTY_PHRASES = {
    'formation_energy_per_atom': _phrases(
        'formation energy per atom | formation energy | formation energies | formation enthalpy '
        '| enthalpy of formation | heat of formation'
    ),
    'energy_above_hull': _phrases(
        'energy above the convex hull | energy above the hull | energy above hull | e above hull | ehull | e hull '
        '| distance to the convex hull | distance to the hull | distance from the hull | hull energy | hull distance'
    ),
    'band_gap': _phrases('band gap | band gaps | bandgap | bandgaps | gap'),
}
MAX_COMPARATORS = _phrases(
    'less than or equal to | lower than or equal to | smaller than or equal to | less than | lower than '
    '| smaller than | below | under | beneath | at most | no more than | not more than | no higher than '
    '| no greater than | no larger than | not above | not exceeding | up to | a maximum of | maximum of | maximum '
    '| max | <= | <'
)
MIN_COMPARATORS = _phrases(
    'greater than or equal to | larger than or equal to | higher than or equal to | more than | greater than '
    '| higher than | larger than | bigger than | wider than | above | over | exceeding | in excess of | at least '
    '| no less than | not less than | no lower than | no smaller than | not below | a minimum of | minimum of '
    '| minimum | min | >= | >'
)
# Words between a property and its bound (``a band gap that is at least 1 eV``).
BOUND_FILLERS = frozenset('of is that which should must be being a an the value values with has = :'.split())
MINIMIZE_WORDS = frozenset(
    'minimize minimise minimizing minimising minimized minimised lowest smallest minimal least narrowest'.split()
)
MAXIMIZE_WORDS = frozenset(
    'maximize maximise maximizing maximising maximized maximised highest largest biggest maximal greatest widest'.split()
)
AS_POSSIBLE = {
    'minimize': _phrases('as low as possible | as small as possible | as narrow as possible'),
    'maximize': _phrases('as high as possible | as large as possible | as big as possible | as wide as possible'),
}
MOST_STABLE = _phrases('the most stable | most stable')
STABLE_PHRASES = _phrases('stable | on the convex hull | on the hull | on hull')
HULL_TAILS = _phrases('the convex hull | the hull | convex hull | hull')
METALLIC_PHRASES = _phrases('metallic | metals | gapless')
DFT_NOUNS = frozenset(
    'run runs calculation calculations calc calcs job jobs evaluation evaluations relaxation relaxations '
    'computation computations'.split()
)
NO_DFT = _phrases('no dft | without dft | without any dft | zero dft')
DFT_BUDGET_KEYS = _phrases('dft budget | budget')
COUNT_QUALIFIERS = _phrases('up to | at most | no more than | a maximum of | max | top')
INCLUDE_KEYS = _phrases('containing | contain | contains | including | include | includes | with | having | bearing')
EXCLUDE_KEYS = _phrases(
    "does not contain | do not contain | don't contain | not containing | not including | except for | free of "
    '| but not | without | excluding | exclude | except | avoiding | avoid | not | no'
)
ONLY_KEYS = _phrases('containing only | only containing | made only of | with only | only')
ELEMENT_SUFFIXES = _phrases('free | containing | bearing | based | rich')
SPACEGROUP_KEYS = _phrases('space group | spacegroup | sg')
SPACEGROUP_NUMBER_WORDS = frozenset(['number', 'no', '#', 'symbol', '=', ':'])
BOUND_SIGNS = _phrases('negative | zero | no | minimum | maximum | min | max')
RANGE_OPENERS = _phrases('between | from | in the range of | in the range')
BOUND_JOINERS = _phrases(', and | and | , | but')

# Energy units: phrase -> (dimension, how many of the unit make one eV or eV/atom).
ENERGY_UNITS = {
    ('ev/atom',): ('eV/atom', 1.0),
    ('ev', 'per', 'atom'): ('eV/atom', 1.0),
    ('ev', '/', 'atom'): ('eV/atom', 1.0),
    ('mev/atom',): ('eV/atom', 1000.0),
    ('mev', 'per', 'atom'): ('eV/atom', 1000.0),
    ('mev', '/', 'atom'): ('eV/atom', 1000.0),
    ('ev',): ('eV', 1.0),
    ('mev',): ('eV', 1000.0),
}


@functools.cache
def _units() -> dict:
    """ENERGY_UNITS and kJ/mol, read per mole of atoms (the unit of formation energies in thermochemical tables)."""
    factor = kj_per_mol_per_ev()
    phrases = _phrases('kj/mol | kj / mol | kj per mol | kj/mole | kj per mole')
    tails = [(), *_phrases('atom | per atom | / atom')]
    return ENERGY_UNITS | {phrase + tail: ('eV/atom', factor) for phrase in phrases for tail in tails}


# ----------------------------------------------------------------------------------------------- tokenizer


@dataclasses.dataclass(frozen=True)
class Token:
    kind: str  # word, number, range, symbol, other
    raw: str

    @property
    def lower(self) -> str:
        return self.raw.lower()


_TOKEN = re.compile(
    r"""(?P<range>\d+(?:\.\d+)?-\d+(?:\.\d+)?)
      | (?P<number>[-+]?\d+(?:\.\d+)?)
      | (?P<word>[A-Za-z][\w\-/']*)
      | (?P<symbol><=|>=|<|>|=|,|;|&|/|\#|:|-)
      | (?P<space>[\s.!?()"'`\[\]{}]+)
      | (?P<other>.)""",
    re.VERBOSE,
)
_UNICODE = str.maketrans({'\u2212': '-', '\u2013': '-', '\u2014': '-', '\u2264': '<=', '\u2265': '>=', '\u2019': "'"})
_FORMULA = re.compile(r'^(?:[A-Z][a-z]?\d*)+$')
_SYMBOL_LIKE = re.compile(r'^[A-Z][a-z]?$')


def tokenize(text: str) -> list[Token]:
    """Words, numbers, ranges (``1-3``) and signs; a hyphenated word that is no chemistry is cut in parts."""
    tokens = []
    for match in _TOKEN.finditer(text.translate(_UNICODE)):
        kind, raw = match.lastgroup, match.group()
        if kind == 'space':
            continue
        if kind == 'word':
            raw = raw.rstrip("-/'")
            if _keeps_whole(raw):
                tokens.append(Token('word', raw))
            else:
                tokens.extend(Token('word', part) for part in re.split(r'[-_]', raw) if part)
            continue
        tokens.append(Token(kind, raw))
    return tokens


def _keeps_whole(word: str) -> bool:
    # English hyphenates words without digits (cobalt-free); symbols such as Fm-3m or P2_1/c have digits.
    return '-' not in word and '_' not in word or _is_chemsys(word) or any(char.isdigit() for char in word)


def _is_chemsys(word: str) -> bool:
    parts = word.split('-')
    return len(parts) > 1 and all(part in element_symbols() for part in parts)


def _spacegroup(word: str) -> int | None:
    try:
        return spacegroup_number(word)
    except ValueError:
        return None


@functools.cache
def _element_names() -> dict[str, str]:
    from pymatgen.core.periodic_table import Element

    return {element.long_name.lower(): element.symbol for element in Element} | ELEMENT_NAME_ALIASES


def _anion(word: str) -> str | None:
    return ANION_CLASSES.get(word.removesuffix('s'))


# ------------------------------------------------------------------------------------------------- parser


class _Request:
    """Reads tokens left to right, one rule at a time, and collects the Goal's fields."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0
        self.fields: dict = {}
        self.include: list[str] = []
        self.exclude: list[str] = []
        self.bounds: dict[str, list] = {}
        self.unparsed: list[str] = []

    # -- looking at tokens

    def token(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def at(self, phrase: tuple, offset: int = 0) -> bool:
        return all(
            (token := self.token(offset + i)) is not None and token.lower == word for i, word in enumerate(phrase)
        )

    def match(self, phrases, offset: int = 0) -> tuple | None:
        """The longest phrase of ``phrases`` that the tokens at ``pos + offset`` spell."""
        found = [phrase for phrase in phrases if self.at(phrase, offset)]
        return max(found, key=len) if found else None

    def words(self, start: int) -> list[str]:
        return [token.raw for token in self.tokens[start : self.pos]]

    def skip(self, words) -> None:
        while (token := self.token()) is not None and token.lower in words:
            self.pos += 1

    # -- recording

    def set(self, name: str, value, start: int) -> None:
        if name in self.fields and self.fields[name] != value:
            raise PlanError(
                f'the request gives two values of {name}: {self.fields[name]} and {value}', self.words(start)
            )
        self.fields[name] = value

    def bound(self, prop: str, low, high) -> None:
        """Every bound on one property narrows it (contradictions are refused by the Goal)."""
        old_low, old_high = self.bounds.get(prop, (None, None))
        lows = [v for v in (old_low, low) if v is not None]
        highs = [v for v in (old_high, high) if v is not None]
        self.bounds[prop] = [max(lows) if lows else None, min(highs) if highs else None]

    # -- reading

    def parse(self) -> None:
        rules = (
            self.dft_budget,
            self.objective,
            self.property_bound,
            self.stability,
            self.metallic,
            self.spacegroup,
            self.crystal_system,
            self.element_list,
            self.chemistry,
            self.count,
        )
        while self.pos < len(self.tokens):
            if any(rule() for rule in rules):
                continue
            if phrase := self.match(FILLER_PHRASES):
                self.pos += len(phrase)
                continue
            token = self.token()
            if token.lower not in FILLER:
                self.unparsed.append(token.raw)
            self.pos += 1

    def integer(self, offset: int = 0) -> tuple[int | float, str] | None:
        """A number (digits or a number word) at ``pos + offset``: (value, text)."""
        token = self.token(offset)
        if token is None:
            return None
        if token.kind == 'number':
            return (float(token.raw) if '.' in token.raw else int(token.raw)), token.raw
        if token.lower in NUMBER_WORDS:
            return NUMBER_WORDS[token.lower], token.raw
        return None

    def whole(self, value: int | float, text: str, what: str, start: int, minimum: int) -> int:
        """``value`` as a count or budget; a fraction or a number below ``minimum`` is refused."""
        if '.' in text or value < minimum:
            limit = 'above zero' if minimum > 0 else 'zero or more'
            self.pos += 1
            raise PlanError(f'{what} must be a whole number {limit}, not {text}', self.words(start))
        return int(value)

    def dft_budget(self) -> bool:
        start = self.pos
        zero = self.match(NO_DFT)
        if zero:
            self.pos += len(zero)
            self.skip(DFT_NOUNS)
            self.set('dft_budget', 0, start)
            return True
        qualifier = self.match(COUNT_QUALIFIERS)
        offset = len(qualifier) if qualifier else 0
        number = self.integer(offset)
        if number is not None and self.at(('dft',), offset + 1):  # "at most 3 DFT runs"
            self.pos += offset + 1
            budget = self.whole(*number, 'a DFT budget', start, minimum=0)
            self.pos += 1
            self.skip(DFT_NOUNS)
            self.set('dft_budget', budget, start)
            return True
        key = self.match(DFT_BUDGET_KEYS)
        if not key:
            return False
        self.pos += len(key)
        self.skip(BOUND_FILLERS)
        number = self.integer()
        if number is None:
            raise PlanError('a DFT budget needs a number of calculations', self.words(start))
        budget = self.whole(*number, 'a DFT budget', start, minimum=0)
        self.pos += 1
        if self.at(('dft',)):
            self.pos += 1
        self.skip(DFT_NOUNS)
        self.set('dft_budget', budget, start)
        return True

    def property_name(self, offset: int = 0) -> tuple[str, tuple] | None:
        """(property, the words that name it) of the property phrase at ``pos + offset``."""
        best = None
        for name, phrases in PROPERTY_PHRASES.items():
            phrase = self.match(phrases, offset)
            if phrase and (best is None or len(phrase) > len(best[1])):
                best = (name, phrase)
        return best

    def objective(self) -> bool:
        start = self.pos
        if phrase := self.match(MOST_STABLE):
            self.pos += len(phrase)
            self.set('objective', ['minimize', 'energy_above_hull'], start)
            return True
        word = self.token()
        if word is None or word.lower not in MINIMIZE_WORDS | MAXIMIZE_WORDS:
            return False
        offset = 2 if self.at(('the',), 1) else 1
        prop = self.property_name(offset)
        if prop is None:
            return False
        self.pos += offset + len(prop[1])
        direction = 'minimize' if word.lower in MINIMIZE_WORDS else 'maximize'
        self.set('objective', [direction, prop[0]], start)
        self.bounds_of(prop[0], start, required=False)
        return True

    def property_bound(self) -> bool:
        start = self.pos
        sign = self.match(BOUND_SIGNS)
        prop = self.property_name(len(sign) if sign else 0)
        if prop is None:
            return False
        name, phrase = prop
        self.pos += (len(sign) if sign else 0) + len(phrase)
        # "formation energy per atom below -1 eV": the phrase says per atom, so eV is eV/atom
        per_atom = phrase[-2:] == ('per', 'atom')
        if sign == ('negative',):
            if name != 'formation_energy_per_atom':
                raise PlanError(f'{name} is never negative', self.words(start))
            self.bound(name, None, 0.0)
            self.bounds_of(name, start, required=False, per_atom=per_atom)
        elif sign in (('zero',), ('no',)):
            if name != 'band_gap':
                raise PlanError(f'"{" ".join(self.words(start))}" is not a bound; give a range', self.words(start))
            self.bound(name, 0.0, 0.0)
        elif sign:  # "a minimum band gap of 1 eV" is a bound, "the minimum band gap" an objective
            after_name = self.pos
            self.skip(BOUND_FILLERS)
            if self.integer() is None:
                self.pos = after_name
                self.set('objective', ['minimize' if sign[0].startswith('min') else 'maximize', name], start)
            else:
                kind = 'min' if sign[0].startswith('min') else 'max'
                self.bound_chain(name, start, [(kind, [self.value(start)])], per_atom)
        else:
            self.bounds_of(name, start, required=True, per_atom=per_atom)
        return True

    def bounds_of(self, name: str, start: int, required: bool, per_atom: bool = False) -> None:
        """The bounds after a property's name: comparisons, ranges, ``as low as possible``, joined by and."""
        self.skip(BOUND_FILLERS)
        for direction, phrases in AS_POSSIBLE.items():
            if phrase := self.match(phrases):
                self.pos += len(phrase)
                self.set('objective', [direction, name], start)
                return
        chain = []
        while (part := self.bound_part(start)) is not None:
            chain.append(part)
            joiner = self.match(BOUND_JOINERS)
            if not joiner or not self.next_bound(len(joiner)):
                break
            self.pos += len(joiner)
        if chain:
            self.bound_chain(name, start, chain, per_atom)
        elif required:
            raise PlanError(
                f'say what the {name} should be: below, above or between values, for example', self.words(start)
            )

    def next_bound(self, offset: int) -> bool:
        """Whether another comparison of the same property starts at ``pos + offset`` (``and below 3 eV``), and
        not a budget or a count (``, at most 2 DFT runs``, ``, at most 5 structures``)."""
        comparator = self.match(MAX_COMPARATORS + MIN_COMPARATORS, offset)
        if not comparator:
            return False
        after = offset + len(comparator) + 1  # the word after the number
        return not self.at(('dft',), after) and not self.counts_a_noun(after)

    def bound_part(self, start: int):
        """One comparison or range: ('max'|'min'|'range'|'exact', [values]); None when none is here."""
        for kind, comparators in (('max', MAX_COMPARATORS), ('min', MIN_COMPARATORS)):
            if comparator := self.match(comparators):
                self.pos += len(comparator)
                return kind, [self.value(start)]
        if (token := self.token()) is not None and token.kind == 'range':
            low, high = token.raw.split('-')
            self.pos += 1
            unit = self.unit()
            return 'range', [(float(low), low, unit), (float(high), high, unit)]
        opener = self.match(RANGE_OPENERS)
        if opener:
            self.pos += len(opener)
            first = self.value(start)
            if not self.match([('and',), ('to',), ('-',)]):
                raise PlanError('a range needs two values: "between 1 and 2 eV"', self.words(start))
            self.pos += 1
            return 'range', [first, self.value(start)]
        if self.integer() is not None:
            first = self.value(start)
            if self.match([('to',), ('-',)]) and self.integer(1) is not None:
                self.pos += 1
                return 'range', [first, self.value(start)]
            return 'exact', [first]
        return None

    def value(self, start: int):
        """A number and its unit, if any: (value, text, unit)."""
        number = self.integer()
        self.pos += 1
        if number is None:
            raise PlanError('a bound needs a number', self.words(start))
        try:
            value = float(number[0])
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise PlanError(f'{number[1]} is too large a number for a bound', self.words(start))
        return value, number[1], self.unit()

    def unit(self):
        units = _units()
        phrase = self.match(units)
        if not phrase:
            return None
        self.pos += len(phrase)
        return units[phrase]

    def bound_chain(self, name: str, start: int, chain, per_atom: bool = False) -> None:
        """Values without a unit take the one unit their phrase names (``between 100 and 200 meV/atom``);
        with ``per_atom`` (the property was called "... per atom"), eV and meV are per atom."""
        units = {unit for _, values in chain for *_, unit in values if unit is not None}
        shared = units.pop() if len(units) == 1 else None
        expected = PROPERTY_UNITS[name]
        for kind, values in chain:
            converted = []
            for number, _, unit in values:
                unit = unit or shared or (expected, 1.0)
                if per_atom and unit[0] == 'eV':
                    unit = ('eV/atom', unit[1])
                if unit[0] != expected:
                    per_atom = ', meV/atom or kJ/mol' if expected == 'eV/atom' else ' or meV'
                    raise PlanError(f'{name} is given in {expected}{per_atom}, not in {unit[0]}', self.words(start))
                converted.append(number / unit[1])
            if kind == 'max':
                self.bound(name, None, converted[0])
            elif kind == 'min':
                self.bound(name, converted[0], None)
            elif kind == 'range':
                self.bound(name, min(converted), max(converted))
            elif converted[0] == 0 and name in NON_NEGATIVE_PROPERTIES:
                self.bound(name, 0.0, 0.0)
            else:
                raise PlanError(
                    f'an exact {name} of {values[0][1]} cannot be met; give a bound or a range '
                    '("below ...", "between ... and ...")',
                    self.words(start),
                )

    def stability(self) -> bool:
        start = self.pos
        if phrase := self.match(STABLE_PHRASES):
            self.pos += len(phrase)
            self.bound('energy_above_hull', 0.0, 0.0)
            return True
        if not self.at(('within',)):
            return False
        self.pos += 1
        limit = self.value(start)
        hull = self.match([(word, *tail) for word in ('of', 'from') for tail in HULL_TAILS])
        if not hull:
            raise PlanError('"within" reads as a distance to the convex hull: "within 50 meV/atom of the hull"')
        self.pos += len(hull)
        self.bound_chain('energy_above_hull', start, [('max', [limit])])
        return True

    def metallic(self) -> bool:
        if phrase := self.match(METALLIC_PHRASES):
            self.pos += len(phrase)
            self.bound('band_gap', 0.0, 0.0)
            return True
        return False

    def spacegroup(self) -> bool:
        start = self.pos
        key = self.match(SPACEGROUP_KEYS)
        if key:
            self.pos += len(key)
            self.skip(SPACEGROUP_NUMBER_WORDS)
            token = self.token()
            if token is None or token.kind not in ('number', 'word'):
                raise PlanError('a space group needs a number (1-230) or a symbol such as Fm-3m', self.words(start))
            self.pos += 1
            if token.kind == 'number':
                number = self.whole(float(token.raw), token.raw, 'a space group number', start, minimum=1)
            elif (number := _spacegroup(token.raw)) is None:
                raise PlanError(f'unknown space group {token.raw}', [token.raw])
            self.set('spacegroup', number, start)
            return True
        token = self.token()
        if token is None or token.kind != 'word' or self.formula(token) or (number := _spacegroup(token.raw)) is None:
            return False
        self.pos += 1
        if key := self.match(SPACEGROUP_KEYS):  # "the Fm-3m space group"
            self.pos += len(key)
        self.set('spacegroup', number, start)
        return True

    def crystal_system(self) -> bool:
        token = self.token()
        if token is None or token.lower not in CRYSTAL_SYSTEMS:
            return False
        self.set('crystal_system', token.lower, self.pos)
        self.pos += 1
        return True

    def element(self, offset: int = 0) -> str | None:
        """The element named at ``pos + offset``: a symbol (``Fe``) or a name (``iron``)."""
        token = self.token(offset)
        if token is None or token.kind != 'word':
            return None
        if token.raw in element_symbols():
            return token.raw
        return _element_names().get(token.lower)

    def element_list(self) -> bool:
        start = self.pos
        for keys, target in ((ONLY_KEYS, 'only'), (EXCLUDE_KEYS, 'exclude'), (INCLUDE_KEYS, 'include')):
            key = self.match(keys)
            if not key:
                continue
            first = self.token(len(key))
            if self.element(len(key)) is None:
                if first is not None and first.kind == 'word' and _SYMBOL_LIKE.match(first.raw):
                    raise PlanError(f'unknown element {first.raw}', [first.raw])
                continue
            self.pos += len(key)
            elements = self.elements(separators={',', 'and', '&'} | ({'or', 'nor'} if target == 'exclude' else set()))
            if target == 'only':
                self.set('chemsys', '-'.join(sorted(elements)), start)
            else:
                (self.include if target == 'include' else self.exclude).extend(elements)
            if target != 'only' and self.at(('only',)):
                raise PlanError('"only" after a list of elements: write "containing only Fe and O"', ['only'])
            return True
        return False

    def elements(self, separators: set[str]) -> list[str]:
        elements = [self.element()]
        self.pos += 1
        while True:
            gap = 0
            while (token := self.token(gap)) is not None and token.lower in separators:
                gap += 1
            if self.element(gap) is None:
                following = self.token(gap)
                if gap and following is not None and following.kind == 'word' and _SYMBOL_LIKE.match(following.raw):
                    raise PlanError(f'unknown element {following.raw}', [following.raw])
                return elements
            elements.append(self.element(gap))
            self.pos += gap + 1

    def formula(self, token: Token) -> bool:
        return token.kind == 'word' and bool(_FORMULA.match(token.raw))

    def chemistry(self) -> bool:
        start = self.pos
        token = self.token()
        if token.kind != 'word':
            return False
        if _is_chemsys(token.raw):
            self.pos += 1
            self.set('chemsys', '-'.join(sorted(token.raw.split('-'))), start)
            return True
        if self.at(('elemental',)) and self.element(1):
            self.pos += 2
            self.set('composition', self.element(-1), start)
            return True
        if element := self.element():
            if token.lower in _vocabulary() and token.raw == token.raw.capitalize() and len(token.raw) <= 2:
                return False  # "In", "I", "No", "As" at the start of a sentence are words, not elements
            self.pos += 1
            suffix = self.match(ELEMENT_SUFFIXES)
            if suffix == ('free',):
                self.exclude.append(element)
            elif suffix == ('rich',):
                raise PlanError(f'"{token.raw}-rich" is not a bound the planner can express', [token.raw, 'rich'])
            else:
                self.include.append(element)
            self.pos += len(suffix) if suffix else 0
            return True
        if self.formula(token):
            unknown = [symbol for symbol in re.findall(r'[A-Z][a-z]?', token.raw) if symbol not in element_symbols()]
            if unknown and token.raw.isupper() and token.raw.isalpha():
                return False  # an acronym such as DFT, not a formula
            if unknown:
                raise PlanError(f'unknown element {", ".join(unknown)} in {token.raw}', [token.raw])
            self.pos += 1
            try:
                self.set('composition', reduced_formula(token.raw), start)
            except ValueError as exception:
                raise PlanError(str(exception), [token.raw]) from None
            return True
        if anion := _anion(token.lower):
            self.pos += 1
            self.include.append(anion)
            return True
        return False

    def count(self) -> bool:
        start = self.pos
        qualifier = self.match(COUNT_QUALIFIERS)
        offset = len(qualifier) if qualifier else 0
        number = self.integer(offset)
        if number is None or not self.counts_a_noun(offset + 1):
            return False
        self.pos += offset
        value = self.whole(*number, 'a count', start, minimum=1)
        self.pos += 1
        self.set('count', value, start)
        return True

    def counts_a_noun(self, offset: int) -> bool:
        """Whether a material noun follows, with only adjectives, elements and formulas in between."""
        while (token := self.token(offset)) is not None:
            if token.lower in MATERIAL_NOUNS or _anion(token.lower):
                return True
            describes = (
                token.lower in COUNT_ADJECTIVES
                or token.lower in CRYSTAL_SYSTEMS
                or self.element(offset) is not None
                or self.formula(token)
                or _is_chemsys(token.raw)
                or (token.kind == 'word' and _spacegroup(token.raw) is not None)
            )
            if not describes:
                return False
            offset += 1
        return False


@functools.cache
def _vocabulary() -> frozenset[str]:
    """Every word the grammar knows: fillers and the words of its phrases."""
    return FILLER | {word for phrases in _all_phrases() for phrase in phrases for word in phrase}


@functools.cache
def _all_phrases() -> list:
    return [
        *PROPERTY_PHRASES.values(),
        MAX_COMPARATORS,
        MIN_COMPARATORS,
        STABLE_PHRASES,
        METALLIC_PHRASES,
        COUNT_QUALIFIERS,
        INCLUDE_KEYS,
        EXCLUDE_KEYS,
        ONLY_KEYS,
        SPACEGROUP_KEYS,
        [(word,) for word in MINIMIZE_WORDS | MAXIMIZE_WORDS | NUMBER_WORDS.keys()],
    ]


def plan_request(text: str):
    """The Goal that ``text`` asks for; a PlanError (message and unplaced words) when there is none."""
    if not text or not text.strip():
        raise PlanError('the request is empty')
    request = _Request(tokenize(text))
    request.parse()
    if request.unparsed:
        unknown = [word for word in request.unparsed if _SYMBOL_LIKE.match(word) and word not in element_symbols()]
        words = ', '.join(repr(word) for word in request.unparsed)
        reason = f'unknown element {", ".join(unknown)}; ' if unknown else ''
        raise PlanError(f'{reason}cannot place {words}: the planner does not guess words', request.unparsed)
    goal = goal_from_dict(
        {
            **request.fields,
            'must_include': request.include,
            'exclude': request.exclude,
            'bounds': request.bounds,
        }
    )
    if not goal.has_request():
        raise PlanError('no materials request in the text: name a composition, elements, a property or a count')
    return goal


def plan(text: str, planner: str = 'rules'):
    """Plan ``text`` with the deterministic planner (``rules``, the default) or an LLM endpoint (``llm``)."""
    if planner == 'rules':
        return plan_request(text)
    if planner == 'llm':
        from .llm import plan_with_llm

        return plan_with_llm(text)
    raise PlanError(f'unknown planner {planner!r}: choose rules or llm')
