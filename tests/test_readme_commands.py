"""Every `smoothgen` command of the README runs (issue 25's target), at test sizes: the command as written, then
options appended that only make it smaller (argparse keeps the last value of an option), in a scratch folder.

Commands that need what a test cannot hold are run elsewhere, each by the test named in `ELSEWHERE`: a file
of the reader's own (`model.onnx`, `model.pt2`: the README's export recipes are run by tests/test_cli.py and
certify), a cluster of several machines or a GPU (`--ray HEAD_IP:6379`, `--ray auto`: tests/test_distributed.py
joins a real multi-node Ray cluster by address), the server (`smoothgen serve`: tests/test_serve_ray.py starts
it and sends real HTTP requests), a signed document (`smoothgen verify cert.json`: tests/test_serve_trust.py), and
the 7-minute `--exhaustive` check (tests/test_generate_cli.py runs it on a shorter prompt).
"""
from __future__ import annotations

import json

import pytest

from smoothgen.cli import main
from test_docs import _readme_commands

#: Options appended to each command (by its subcommand) so that it runs in seconds: fewer inputs and copies.
SMALLER = {
    "certify": ["--num", "2", "--n", "200", "--no-progress", "--overwrite"],
    "center": ["--num", "1", "--n", "200", "--m", "400", "--no-progress", "--overwrite"],
    "generate": ["--samples", "40", "--no-progress", "--overwrite"],
}
#: Extra options for some generate modes (the selection copies and tokens of text; the diffusion steps).
GENERATE_TEXT = ["--selection-samples", "10", "--max-new-tokens", "3"]
GENERATE_IMAGES = ["--steps", "4"]

#: Commands run by another test, with the reason this one cannot.
ELSEWHERE = {
    "model.onnx": "the reader's own ONNX file: the README's export recipe is run and certified by tests/test_cli.py",
    "model.pt2": "the reader's own torch.export file: the README's recipe is run and certified by tests/test_cli.py",
    "HEAD_IP:6379": "a cluster of several machines: tests/test_distributed.py joins a multi-node Ray cluster by address",
    "auto": "the cluster this machine belongs to, with a GPU: the same join as by address, which "
            "tests/test_distributed.py makes with a multi-node cluster (GPU workers: make gpu-check)",
    "serve": "starts the server until Ctrl-C: tests/test_serve_ray.py starts it and sends HTTP requests",
    "verify": "a document the server signed: tests/test_serve_trust.py verifies and recomputes them",
    "--exhaustive": "7 minutes of exact decoding (2 550 edited prompts): tests/test_generate_cli.py runs --exhaustive "
                    "on a shorter prompt (test_ablation_exhaustive_check_decodes_every_single_substitution)",
}


def _elsewhere(argv: list[str]) -> str | None:
    if argv[0] in ("serve", "verify"):
        return ELSEWHERE[argv[0]]
    if "--exhaustive" in argv:
        return ELSEWHERE["--exhaustive"]
    for i, word in enumerate(argv):
        if word == "--ray" and i + 1 < len(argv) and argv[i + 1] in ELSEWHERE:
            return ELSEWHERE[argv[i + 1]]
        if word in ELSEWHERE and i > 0 and argv[i - 1] == "--model":
            return ELSEWHERE[word]
    return None


def _smaller(argv: list[str]) -> list[str]:
    extra = list(SMALLER.get(argv[0], []))
    if argv[0] == "generate":
        extra += GENERATE_IMAGES if ("--diffusion" in argv or "--text" in argv) else GENERATE_TEXT
        if "--selection-samples" in argv and "--selection-samples" in extra:  # its own count (0) is small already
            i = extra.index("--selection-samples")
            del extra[i:i + 2]
    if "--target-radius" in argv:
        extra += ["--max-samples", "400"]  # (an option of the sequential test only)
    if "--ray" in argv:
        extra += ["--ray-workers", "1"]
    return [*argv, *extra]


README_COMMANDS = [argv for argv in _readme_commands() if "--help" not in argv]


@pytest.mark.parametrize("argv", README_COMMANDS, ids=[" ".join(a)[:60] for a in README_COMMANDS])
def test_every_readme_command_runs(argv, tmp_path, monkeypatch, capsys):
    reason = _elsewhere(argv)
    if reason is not None:
        pytest.skip(reason)
    monkeypatch.chdir(tmp_path)
    code = main(_smaller(argv))
    out, err = capsys.readouterr()
    assert code == 0, f"smoothgen {' '.join(argv)}: {err[-2000:]}"
    if "--json" in argv:
        assert json.loads(out)["model"]
    for option in ("--out", "--tsv", "--png"):
        if option in argv:
            assert (tmp_path / argv[argv.index(option) + 1]).is_file(), option


def test_the_commands_not_run_here_are_the_ones_listed():
    skipped = [a for a in README_COMMANDS if _elsewhere(a)]
    assert 0 < len(skipped) <= 7 and len(README_COMMANDS) - len(skipped) >= 20
    assert _smaller(["certify", "--n", "100000"])[-6:] == SMALLER["certify"]  # the last --n wins
