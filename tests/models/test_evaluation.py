"""The run records that benchmarks write beside their figures."""

import subprocess

from aiida_hpcai.models.evaluation import git_commit


def test_commit_is_marked_changed_by_code_but_not_by_benchmark_results(tmp_path):
    def git(*args):
        subprocess.run(['git', *args], cwd=tmp_path, check=True, capture_output=True)

    git('init', '-q')
    (tmp_path / 'benchmarks' / 'results').mkdir(parents=True)
    (tmp_path / 'benchmarks' / 'results' / 'figure.json').write_text('{}')
    (tmp_path / 'code.py').write_text('x = 1\n')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'first')
    head = git_commit(tmp_path)
    assert len(head) == 40 and '+' not in head

    # a running benchmark rewrites its own result file: the code it runs is still the commit's
    (tmp_path / 'benchmarks' / 'results' / 'figure.json').write_text('{"partial": true}')
    assert git_commit(tmp_path) == git_commit(tmp_path / 'benchmarks') == head
    git('checkout', '--', 'benchmarks')
    (tmp_path / 'code.py').write_text('x = 2\n')
    assert git_commit(tmp_path) == git_commit(tmp_path / 'benchmarks') == f'{head}+changes'  # the whole checkout


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert git_commit(tmp_path) == 'unknown'
