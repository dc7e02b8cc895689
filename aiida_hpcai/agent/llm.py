"""The optional LLM planner: any OpenAI-compatible chat-completions endpoint reads the request.

The endpoint gets the request and a system prompt with the Goal's JSON schema; its answer must be one
JSON object, which is validated into the same :class:`~aiida_hpcai.agent.goal.Goal` the deterministic
planner returns, or the request is refused with a PlanError. The client is a plain HTTP POST with
the standard library (no ``openai`` package needed). The endpoint, model and key come from the
environment only and are never part of the Goal, so they never reach provenance.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from .goal import DEFAULT_DFT_BUDGET, PROPERTY_UNITS, Goal, PlanError, goal_from_dict, kj_per_mol_per_ev

ENV_BASE_URL = 'HPCAI_LLM_BASE_URL'  # e.g. http://127.0.0.1:8000/v1 (the part before /chat/completions)
ENV_MODEL = 'HPCAI_LLM_MODEL'
ENV_API_KEY = 'HPCAI_LLM_API_KEY'  # optional: local servers often need none
DEFAULT_TIMEOUT = 60  # seconds for one answer


def system_prompt() -> str:
    """What the model is told: the Goal's schema, the units, and how to refuse."""
    units = ', '.join(f'{name} in {unit}' for name, unit in PROPERTY_UNITS.items())
    schema = json.dumps(Goal.model_json_schema(), sort_keys=True)
    return (
        'You turn a materials-discovery request into a JSON object and answer with that object only, '
        'no prose and no code fence. The object follows this JSON schema:\n'
        f'{schema}\n'
        'Rules: composition is a chemical formula or null; chemsys lists the exact elements of every '
        'result, sorted alphabetically and joined by "-", or null; must_include and exclude are lists of '
        'element symbols; count is a positive integer or null; bounds maps a property to [min, max], '
        f'null for an open side, with {units}: convert meV/atom (divide by 1000) and kJ/mol (per mole of '
        f'atoms, divide by {kj_per_mol_per_ev():.3f}); "stable" is energy_above_hull [0, 0]; "metallic" is band_gap [0, 0]; '
        'spacegroup is the international number 1-230; crystal_system is a lower-case name; objective is '
        '["minimize" or "maximize", property] or null; dft_budget is the number of DFT calculations '
        f'allowed ({DEFAULT_DFT_BUDGET} when the request names none). Never guess: if a word of the request '
        'cannot be expressed with these fields, or the text asks for no material, answer '
        '{"error": {"message": "<why>", "unparsed": ["<the words>"]}} instead.'
    )


def plan_with_llm(
    text: str, base_url: str | None = None, model: str | None = None, api_key: str | None = None, timeout=None
) -> Goal:
    """The Goal an OpenAI-compatible endpoint reads from ``text``; arguments default to the environment."""
    base_url = base_url or os.environ.get(ENV_BASE_URL)
    model = model or os.environ.get(ENV_MODEL)
    api_key = api_key or os.environ.get(ENV_API_KEY)
    if not base_url or not model:
        raise PlanError(f'the LLM planner needs {ENV_BASE_URL} and {ENV_MODEL} set (and {ENV_API_KEY} if required)')
    if not text or not text.strip():
        raise PlanError('the request is empty')
    body = {
        'model': model,
        'temperature': 0,
        'messages': [{'role': 'system', 'content': system_prompt()}, {'role': 'user', 'content': text}],
    }
    answer = parse_answer(_chat_completion(base_url, api_key, body, timeout or DEFAULT_TIMEOUT))
    if 'error' in answer:
        error = answer['error']
        if not isinstance(error, dict) or not isinstance(error.get('message'), str):
            raise PlanError(f"the LLM's answer has an error without a message: {json.dumps(answer)[:200]}")
        unparsed = error.get('unparsed') or []
        raise PlanError(error['message'], [str(word) for word in unparsed] if isinstance(unparsed, list) else [])
    try:
        goal = goal_from_dict(answer)
    except PlanError as error:
        raise PlanError(f"the LLM's answer is {error.message}") from None
    if not goal.has_request():
        raise PlanError('no materials request in the text (the LLM found none)')
    return goal


def parse_answer(content: str) -> dict:
    """The JSON object of the model's answer (a ```json fence around it is allowed); PlanError otherwise."""
    text = content.strip()
    if text.startswith('```'):
        text = text.removeprefix('```json').removeprefix('```').removesuffix('```').strip()
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exception:
        raise PlanError(f"the LLM's answer is not JSON ({exception.msg}): {content[:200]!r}") from None
    if not isinstance(answer, dict):
        raise PlanError(f"the LLM's answer is not a JSON object: {content[:200]!r}")
    return answer


def _chat_completion(base_url: str, api_key: str | None, body: dict, timeout: float) -> str:
    """POST ``{base_url}/chat/completions`` and return the first choice's message text."""
    url = base_url.rstrip('/') + '/chat/completions'
    headers = {'Content-Type': 'application/json', 'Accept': 'application/json'}
    if api_key:
        headers['Authorization'] = f'Bearer {api_key}'
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method='POST')
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exception:
        detail = exception.read()[:200].decode(errors='replace')
        raise PlanError(f'the LLM endpoint {url} answered HTTP {exception.code}: {detail}') from None
    except (urllib.error.URLError, OSError) as exception:
        reason = getattr(exception, 'reason', exception)
        raise PlanError(f'cannot reach the LLM endpoint {url}: {reason}') from None
    try:
        return json.loads(payload)['choices'][0]['message']['content']
    except (ValueError, KeyError, IndexError, TypeError):
        raise PlanError(f'the LLM endpoint {url} did not answer in the chat-completions format') from None
