"""Every code block of README.md and docs/*.md runs as printed, on a CPU, offline.

Markdown is parsed with markdown-it-py. Every code block is fenced with a language: ``python`` and
``bash`` blocks are run (each in a fresh temporary directory, in a subprocess, ``python`` being this
interpreter and the package this checkout), ``toml`` blocks are parsed, ``text`` blocks are text.
An HTML comment just before a fence says how a block is treated:

- ``<!-- snippet: skip REASON -->``: not run (a network, a cluster, a GPU, minutes); the reason is required;
- ``<!-- snippet: file PATH -->``: the block is the file PATH, written into the directory of every later
  block of the same document (a module a command imports, a suite a sweep reads);
- ``<!-- snippet: setup results -->``: ``results/`` holds three finished runs (naive, kl and replay on
  split-digits, one epoch; made once per test session) for a plot to read;
- ``<!-- snippet: append ARGS -->``: ARGS are appended to each ``forgetting.run`` command of the block
  and to each sweep's run options after ``--`` (fewer epochs or examples: the command as printed, only
  smaller).

A block edited into something that does not run fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT

markdown_it = pytest.importorskip("markdown_it")

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash", "toml", "text")
MARKER = re.compile(r"<!--\s*snippet:\s*(skip|file|setup|append)\b\s*(.*?)\s*-->", re.S)
SETUPS = ("results",)
LOCAL_DATA = re.compile(r"--benchmark (uci-sentiment|ag-news|clinc150|split-mnist|permuted-mnist|parity-mnist|"
                        r"lm-domains)\b")
# a forgetting.run command, or a sweep's grid (its run options after --), up to a trailing comment
RUN_COMMAND = re.compile(r"(forgetting[.-](?:run\b|sweep\b[^#\n]*?\s--\s)[^#\n]*?)(\s*(#.*)?)$", re.M)


@dataclass
class Block:
    document: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    kind: str | None  # the marker: skip, file, setup, append or None
    argument: str

    @property
    def id(self) -> str:
        return f"{self.document.name}:{self.line}"


def blocks(document: Path) -> list[Block]:
    tokens = markdown_it.MarkdownIt("commonmark").parse(document.read_text(encoding="utf-8"))
    out = []
    for i, tok in enumerate(tokens):
        if tok.type == "code_block":  # test_every_block_is_fenced... names it
            out.append(Block(document, tok.map[0] + 1, "indented", tok.content, None, ""))
            continue
        if tok.type != "fence":
            continue
        before = tokens[i - 1] if i and tokens[i - 1].type == "html_block" else None
        marker = MARKER.search(before.content) if before is not None else None
        out.append(Block(document, tok.map[0] + 1, tok.info.strip(), tok.content,
                         marker.group(1) if marker else None, marker.group(2) if marker else ""))
    return out


ALL = [b for d in DOCUMENTS for b in blocks(d)]
RUNNABLE = [b for b in ALL if b.language in ("python", "bash") and b.kind not in ("skip", "file")]


def test_every_block_is_fenced_with_a_known_language_and_skips_say_why():
    assert len(ALL) > 10
    for b in ALL:
        assert b.language != "indented", f"{b.id}: an indented code block; fence it with a language " \
                                         f"({', '.join(LANGUAGES)}) so that it is tested"
        assert b.language in LANGUAGES, f"{b.id}: fence language {b.language!r}, allowed: {', '.join(LANGUAGES)}"
        if b.kind in ("skip", "file", "setup", "append"):
            assert b.argument, f"{b.id}: '<!-- snippet: {b.kind} -->' needs its argument"
        if b.kind == "setup":
            assert b.argument in SETUPS, f"{b.id}: unknown setup {b.argument!r}, allowed: {', '.join(SETUPS)}"
        if b.kind == "append":
            assert RUN_COMMAND.search(b.code), f"{b.id}: 'append' but no forgetting.run command in the block"
        if b.language == "toml":
            tomllib.loads(b.code)  # a TOML block at least parses


def test_skipped_blocks_are_few():
    skipped = [b.id for b in ALL if b.kind == "skip"]
    assert len(skipped) <= len(RUNNABLE), f"more blocks skipped than run: {skipped}"


def with_appended(code: str, args: str) -> str:
    code = code.replace("\\\n", " ")  # one line per command
    return RUN_COMMAND.sub(lambda m: f"{m.group(1).rstrip()} {args}{m.group(2)}", code)


def workspace(tmp: Path, block: Block) -> dict:
    """A directory as a fresh clone's user has it: the repository's files beside the block (benchmarks/,
    examples/, ...), ``python`` and ``.venv/bin/python`` this interpreter, the earlier ``file`` blocks."""
    for name in ("benchmarks", "examples", "run_all.sh", "pyproject.toml"):
        (tmp / name).symlink_to(ROOT / name)
    bin_dir = tmp / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {"python": "", "python3": "", "forgetting-run": "-m forgetting.run",
               "forgetting-sweep": "-m forgetting.sweep", "forgetting-plot": "-m forgetting.plot"}
    for name, module in scripts.items():
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {module} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    for earlier in blocks(block.document):
        if earlier.line >= block.line:
            break
        if earlier.kind == "file":
            path = tmp / earlier.argument
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(earlier.code)
    env = dict(os.environ)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp)]), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", FORGETTING_PYTHON=sys.executable)
    return env


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory) -> Path:
    """Three one-epoch runs on split-digits (naive, kl, replay), made once, for the plot commands."""
    results = tmp_path_factory.mktemp("snippet-runs") / "results"
    from forgetting.run import main

    for method in ("naive", "kl", "replay"):  # in this process: a sweep would start a worker process for them
        assert main(["--method", method, "--epochs", "1", "--hidden", "64", "--results-dir", str(results),
                     "--quiet"]) == 0
    return results


@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=pytest.mark.slow) for b in RUNNABLE])  # processes
def test_block_runs_as_printed(tmp_path, block, request):
    from forgetting.streams import default_data_dir

    if default_data_dir() is None and LOCAL_DATA.search(block.code):
        pytest.skip("the block reads ../shared/data (or $FORGETTING_DATA_DIR), not found here")
    env = workspace(tmp_path, block)
    if block.kind == "setup":  # results/ to read: a copy of the session's finished runs
        shutil.copytree(request.getfixturevalue("finished_runs"), tmp_path / "results")
    code = with_appended(block.code, block.argument) if block.kind == "append" else block.code
    if block.language == "python":
        (tmp_path / "snippet.py").write_text(code)
        command = [sys.executable, "snippet.py"]
    else:
        (tmp_path / "snippet.sh").write_text(code)
        command = ["bash", "-euo", "pipefail", "snippet.sh"]
    p = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{block.id} ({block.language}) failed:\n{code}\n--- stdout\n{p.stdout[-3000:]}\n" \
                              f"--- stderr\n{p.stderr[-3000:]}"


def test_append_adds_to_each_run_command_before_its_comment():
    code = "python -m forgetting.run --benchmark a \\\n    --lr 1  # note\nforgetting-run --x 1\necho done\n"
    assert with_appended(code, "--epochs 1") == ("python -m forgetting.run --benchmark a      --lr 1 --epochs 1  # note\n"
                                                 "forgetting-run --x 1 --epochs 1\necho done\n")
    sweeps = "forgetting-sweep a.toml --list\nforgetting-sweep --grid x=1,2 -- --method kl  # grid\n"
    assert with_appended(sweeps, "--epochs 1") == ("forgetting-sweep a.toml --list\n"
                                                   "forgetting-sweep --grid x=1,2 -- --method kl --epochs 1  # grid\n")


def test_suites_doc_names_every_key_the_loader_takes():
    from forgetting.suite import EXPERIMENT_KEYS, SUITE_KEYS

    text = (ROOT / "docs" / "SUITES.md").read_text(encoding="utf-8")
    missing = [k for k in (*SUITE_KEYS, *EXPERIMENT_KEYS, "grid.OPTION") if f"`{k}`" not in text]
    assert not missing, f"docs/SUITES.md does not document {missing}"
