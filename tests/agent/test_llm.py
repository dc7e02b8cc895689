"""The LLM planner against a real chat-completions server on 127.0.0.1 that gives canned answers."""

import http.server
import json
import threading

import pytest
from click.testing import CliRunner

from aiida_hpcai.agent.goal import PlanError
from aiida_hpcai.agent.llm import ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, plan_with_llm
from aiida_hpcai.cli import cli

FE2O3 = {'composition': 'Fe2O3', 'count': 50, 'bounds': {'formation_energy_per_atom': [None, 1.0]}}


class ChatCompletions(http.server.BaseHTTPRequestHandler):
    """``POST /v1/chat/completions``: the canned answer for the user's message (HTTP status, message text)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        self.server.requests.append({'path': self.path, 'headers': dict(self.headers), 'body': body})
        status, content = self.server.answers[body['messages'][-1]['content']]
        if status != 200:
            payload = {'error': {'message': 'the model is overloaded'}}
        elif content is None:
            payload = {'id': 'chatcmpl-0', 'object': 'text_completion'}  # not the chat format
        else:
            payload = {
                'id': 'chatcmpl-0',
                'object': 'chat.completion',
                'created': 0,
                'model': body['model'],
                'choices': [
                    {'index': 0, 'message': {'role': 'assistant', 'content': content}, 'finish_reason': 'stop'}
                ],
            }
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def llm_server(monkeypatch):
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), ChatCompletions)
    server.requests, server.answers = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(ENV_BASE_URL, f'http://127.0.0.1:{server.server_port}/v1')
    monkeypatch.setenv(ENV_MODEL, 'canned-model')
    monkeypatch.setenv(ENV_API_KEY, 'secret-key')
    yield server
    server.shutdown()
    server.server_close()


def test_answer_becomes_the_same_goal(llm_server):
    text = 'Please generate up to 50 structures of Fe2O3 with a formation energy of less than 1 eV/atom'
    llm_server.answers[text] = (200, json.dumps(FE2O3))
    goal = plan_with_llm(text)
    assert goal.composition == 'Fe2O3' and goal.count == 50
    assert goal.bounds == {'formation_energy_per_atom': (None, 1.0)}
    (request,) = llm_server.requests
    assert request['path'] == '/v1/chat/completions'
    assert request['headers']['Authorization'] == 'Bearer secret-key'
    assert request['body']['model'] == 'canned-model' and request['body']['temperature'] == 0
    system, user = request['body']['messages']
    assert system['role'] == 'system' and '"energy_above_hull"' in system['content'] and 'unparsed' in system['content']
    assert user == {'role': 'user', 'content': text}
    # the endpoint, model and key are not part of the goal, so they never reach provenance
    assert 'secret-key' not in goal.model_dump_json() and '127.0.0.1' not in goal.model_dump_json()


def test_answer_in_a_code_fence_is_read(llm_server):
    llm_server.answers['metallic Fe-Ni'] = (200, '```json\n{"chemsys": "Ni-Fe", "bounds": {"band_gap": [0, 0]}}\n```')
    goal = plan_with_llm('metallic Fe-Ni')
    assert goal.chemsys == 'Fe-Ni' and goal.bounds == {'band_gap': (0.0, 0.0)}


@pytest.mark.parametrize(
    'answer, message',
    [
        ('Sure! Here are some Fe2O3 structures.', "the LLM's answer is not JSON"),
        ('{"composition": "Fe2O3", "count": 50', "the LLM's answer is not JSON"),
        ('["Fe2O3", 50]', 'not a JSON object'),
        ('{"composition": "Xx2O3"}', "the LLM's answer is not a valid goal: composition: unknown element 'Xx'"),
        ('{"composition": "Fe2O3", "colour": "red"}', 'colour: Extra inputs are not permitted'),
        ('{"count": -3, "composition": "Fe2O3"}', 'count: Input should be greater than 0'),
        ('{"bounds": {"band_gap": [3, 1]}}', 'contradictory bounds on band_gap'),
        ('{"error": "no"}', 'an error without a message'),
        ('{}', 'no materials request'),
    ],
)
def test_malformed_answers_are_refused(llm_server, answer, message):
    llm_server.answers['some request'] = (200, answer)
    with pytest.raises(PlanError) as info:
        plan_with_llm('some request')
    assert message in info.value.message


def test_refusal_of_the_model_is_passed_on(llm_server):
    answer = {'error': {'message': 'no materials request', 'unparsed': ['make', 'it', 'shiny']}}
    llm_server.answers['make it shiny'] = (200, json.dumps(answer))
    with pytest.raises(PlanError) as info:
        plan_with_llm('make it shiny')
    assert info.value.as_dict() == answer


def test_endpoint_failures_are_plan_errors(llm_server, monkeypatch):
    llm_server.answers['overloaded'] = (503, '')
    with pytest.raises(PlanError, match='answered HTTP 503: .*overloaded'):
        plan_with_llm('overloaded')
    llm_server.answers['wrong format'] = (200, None)
    with pytest.raises(PlanError, match='chat-completions format'):
        plan_with_llm('wrong format')
    with pytest.raises(PlanError, match='cannot reach the LLM endpoint'):
        plan_with_llm('anything', base_url='http://127.0.0.1:9/v1', timeout=5)
    monkeypatch.delenv(ENV_BASE_URL)
    with pytest.raises(PlanError, match=ENV_BASE_URL):
        plan_with_llm('anything')


def test_cli_with_the_llm_planner(llm_server):
    llm_server.answers['Fe2O3 below 1 eV/atom'] = (200, json.dumps(FE2O3))
    llm_server.answers['gibberish'] = (200, 'I cannot help with that')
    result = CliRunner().invoke(cli, ['plan', 'Fe2O3 below 1 eV/atom', '--planner', 'llm', '--json'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)['composition'] == 'Fe2O3'
    result = CliRunner().invoke(cli, ['plan', 'gibberish', '--planner', 'llm', '--json'])
    assert result.exit_code == 1
    error = json.loads(result.output)['error']
    assert "the LLM's answer is not JSON" in error['message'] and error['unparsed'] == []
    assert 'secret-key' not in result.output
