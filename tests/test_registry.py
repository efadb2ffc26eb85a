"""One resolve: run ids that only what changes the numbers can change, inapplicable options refused
everywhere, and a user's own method run from a module of theirs and through an entry point."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap

import pytest

from forgetting import registry
from forgetting.config import Component
from forgetting.errors import BadInput
from forgetting.options import Option
from forgetting.registry import make_config
from forgetting.streams import BENCHMARKS
from forgetting.suite import load_suite
from conftest import ROOT, run_cli

CASES = [  # one run of each kind of component
    dict(benchmark="split-digits", method="kl"),
    dict(benchmark="permuted-digits", method="ewc", scenario="task"),
    dict(benchmark="split-digits", method="kl+rdrop", epochs=2),
    dict(benchmark="uci-sentiment", model="bert", method="naive", data_dir=None),
]


def ids() -> list[str]:
    return [make_config(**c).run_id for c in CASES]


def test_a_new_option_with_a_default_changes_only_the_ids_of_its_own_component(monkeypatch):
    before = ids()
    new = Option("made_up", float, 1.0, "a new option")
    ewc = registry.method_class("ewc")
    monkeypatch.setattr(ewc, "options", [*ewc.options, new])
    after_method = ids()
    assert after_method[0] == before[0] and after_method[2:] == before[2:]
    assert after_method[1] != before[1]  # the ewc run: its method has a new option
    monkeypatch.setitem(BENCHMARKS, "permuted-digits",
                        dataclasses.replace(BENCHMARKS["permuted-digits"],
                                            options=(*BENCHMARKS["permuted-digits"].options, new)))
    after_stream = ids()
    assert after_stream[0] == before[0] and after_stream[2:] == before[2:]
    bert = registry.model("bert")
    monkeypatch.setitem(registry._registered["model"], "bert", dataclasses.replace(bert, options=(*bert.options, new)))
    after_model = ids()
    assert after_model[:3] == after_stream[:3] and after_model[3] != before[3]


def test_a_default_spelled_out_or_left_out_and_execution_settings_give_the_same_id(tmp_path):
    plain = make_config()
    assert make_config(kl_lambda=1.0, temperature=1.0, epochs=5, scenario="domain", hidden=[400, 400]).run_id \
        == plain.run_id
    assert make_config(teacher_cache=False, teacher_cache_mb=1.0, device="cpu", data_dir=str(tmp_path),
                       results_dir=str(tmp_path), progress=False).run_id == plain.run_id
    assert make_config(benchmark="split-mnist", download=True, data_dir=str(tmp_path)).run_id \
        == make_config(benchmark="split-mnist", data_dir=str(tmp_path)).run_id
    assert make_config(method="kl + rdrop").run_id == make_config(method="kl+rdrop").run_id
    assert make_config(method="kl + rdrop").method.name == "kl+rdrop"
    assert make_config(kl_lambda=0.5).run_id != plain.run_id
    # --class-outputs changes nothing outside the class scenario, so it gives no new run there
    for scenario in ("task", "domain"):
        assert make_config(scenario=scenario, class_outputs="all").run_id == make_config(scenario=scenario).run_id
    assert make_config(scenario="class", class_outputs="all").run_id != make_config(scenario="class").run_id
    # the settings are kept (they are what runs), only out of the hash
    c = make_config(teacher_cache=False)
    assert c.method.settings == {"teacher_cache": False, "teacher_cache_mb": 2048.0}
    assert "teacher_cache" not in json.dumps(c.hashed_dict())


def test_the_cli_and_a_suite_resolve_to_the_same_config(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(textwrap.dedent("""
        [[experiment]]
        benchmark = "permuted-digits"
        scenarios = ["task"]
        seeds = [3]
        epochs = 2
        stream_options = { n_tasks = 3 }
        [[experiment.method]]
        name = "kl + rdrop"
        kl_lambda = 0.5
    """))
    from_suite = load_suite(suite).runs(str(tmp_path), None)[0]
    from forgetting.run import build_parser, config_from_args

    ns = build_parser().parse_args(["--benchmark", "permuted-digits", "--scenario", "task", "--seed", "3",
                                    "--epochs", "2", "--n-tasks", "3", "--method", "kl+rdrop", "--kl-lambda", "0.5"])
    assert from_suite.run_id == config_from_args(ns).run_id


def _inapplicable() -> list[tuple[str, str, Option]]:
    """(kind, the chosen component, option) for every declared option the default run does not take."""
    chosen = {"stream": "split-digits", "model": "mlp", "method": "kl"}
    out = []
    for kind, name in chosen.items():
        own = {o.name for o in registry.options_of(kind, name)}
        out += [(kind, name, o) for o in registry.all_options(kind) if o.name not in own]
    return out


def _value(o: Option) -> str:
    if o.choices:
        return str(o.choices[-1])
    return {bool: "true", int: "3", float: "0.5", str: "x"}[o.type]


@pytest.mark.parametrize("kind,name,option", _inapplicable(), ids=lambda x: getattr(x, "name", x))
def test_every_inapplicable_option_is_refused_on_the_cli(capsys, tmp_path, kind, name, option):
    from forgetting.run import main

    given = [option.flag] if option.type is bool else [option.flag, _value(option)]  # booleans are flags
    code = main(["--quiet", "--results-dir", str(tmp_path / "r"), *given])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{option.flag} does not apply to" in err and repr(name) in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kind,name,option", _inapplicable(), ids=lambda x: getattr(x, "name", x))
def test_every_inapplicable_option_is_refused_in_a_suite(tmp_path, kind, name, option):
    table = {"stream": "stream_options", "model": "model_options"}.get(kind)
    value = {bool: "true", int: "3", float: "0.5", str: '"x"'}[option.type]
    if option.choices:
        value = repr(option.choices[-1]).replace("'", '"')
    if option.nargs:
        value = f"[{value}]"
    lines = ['[[experiment]]', 'benchmark = "split-digits"', 'scenarios = ["domain"]', 'seeds = [0]', 'epochs = 1']
    if table:
        lines.append(f"{table} = {{ {option.name} = {value} }}")
    lines += ['[[experiment.method]]', 'name = "kl"']
    if not table:
        lines.append(f"{option.name} = {value}")
    suite = tmp_path / "s.toml"
    suite.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput) as e:
        load_suite(suite)
    assert str(suite) in str(e.value) and repr(option.name) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kw,named", [
    (dict(device="gpu"), "'gpu'"),
    (dict(seed=2**32), "4294967296"),
    (dict(benchmark="nope"), "'nope'"),
    (dict(scenario="tasks"), "'tasks'"),
    (dict(model="mlp", benchmark="uci-sentiment"), "tensor"),
    (dict(method="avalanche-naive+kl"), "avalanche"),
    (dict(five_order=3), "--five-order does not apply to benchmark 'split-digits'"),
])
def test_bad_values_from_python_are_one_line_errors(kw, named):
    with pytest.raises(BadInput) as e:
        make_config(**kw)
    assert named in str(e.value) and "\n" not in str(e.value)


def test_the_seed_bound_is_checked_on_the_cli_before_any_run(tmp_path):
    p = run_cli("forgetting.run", "--seed", "4294967296", "--results-dir", str(tmp_path / "r"))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--seed" in p.stderr
    assert not (tmp_path / "r").exists()


def test_avalanche_strategies_implement_the_method_protocol_with_their_own_runner():
    from forgetting.methods.base import Method

    for name in ("avalanche-naive", "avalanche-lwf"):
        cls = registry.method_class(name)
        assert issubclass(cls, Method) and cls.runner == "avalanche" and "class_distribution" in cls.needs
        assert registry.runner(name).__name__ == "AvalancheTrainer"
    assert registry.runner("kl+rdrop").__name__ == "Trainer"


def _readme_method() -> str:
    """The user's method as the README shows it (so the README's example is what is tested)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# mypkg/mymethod\.py.*?)```", text, re.S)
    assert block, "README: the example of a user's own method is missing"
    code = block.group(1)
    assert len(code.strip().splitlines()) < 40
    return code


def _package(tmp_path, entry_point: bool):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mymethod.py").write_text(_readme_method())
    if entry_point:
        info = tmp_path / "mypkg-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[forgetting.methods]\nl1-anchor = mypkg.mymethod:L1Anchor\n")
    return {"PYTHONPATH": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["module path", "entry point"])
def test_a_users_method_runs_from_their_own_package(tmp_path, how):
    env = _package(tmp_path, entry_point=how == "entry point")
    name = "mypkg.mymethod" if how == "module path" else "l1-anchor"
    results = tmp_path / "results"
    p = run_cli("forgetting.run", "--method", name, "--l1-alpha", "0.001", "--epochs", "1", "--quiet",
                "--results-dir", str(results), env=env)
    assert p.returncode == 0, p.stderr
    (run_dir,) = results.iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"] == {"name": name, "options": {"l1_alpha": 0.001}, "settings": {}}
    import pandas as pd

    rows = pd.read_csv(run_dir / "metrics.csv")
    assert set(rows["method"]) == {name} and set(rows["lambda"]) == {0.001}
    assert rows["accuracy"].notna().all()
    p = run_cli("forgetting.run", "--method", name, "--kl-lambda", "1", "--results-dir", str(results), env=env)
    assert p.returncode == 2 and "--kl-lambda does not apply to method" in p.stderr
    listed = run_cli("forgetting.run", "--help", env=env)
    assert ("l1-anchor" in listed.stdout) == (how == "entry point")  # entry points are listed; any module path works


def test_a_missing_extra_is_named_in_one_line(monkeypatch):
    import forgetting.extras as extras

    real = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda m: None if m in ("transformers", "avalanche") else real(m))
    with pytest.raises(BadInput, match=r"needs the \[text\] extra \(transformers not installed\): "
                                       r"pip install 'forgetting\[text\]'"):
        make_config(benchmark="uci-sentiment", model="bert")
    with pytest.raises(BadInput, match=r"--method avalanche-ewc needs the \[avalanche\] extra"):
        make_config(method="avalanche-ewc")
    make_config(method="kl")  # the core needs neither


def test_a_run_reads_its_options_from_a_toml_file_and_flags_win(tmp_path, capsys):
    from forgetting.run import main

    (tmp_path / "run.toml").write_text('method = "kl+rdrop"\nkl_lambda = 0.5\nepochs = 1\nhidden = [16]\n')
    code = main(["--config", str(tmp_path / "run.toml"), "--epochs", "2", "--no-teacher-cache", "--quiet",
                 "--results-dir", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    (run_dir,) = (tmp_path / "r").iterdir()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method"]["name"] == "kl+rdrop" and config["method"]["options"]["kl_lambda"] == 0.5
    assert config["loop"]["epochs"] == 2 and config["model"]["options"]["hidden"] == [16]
    assert config["method"]["settings"]["teacher_cache"] is False
    (tmp_path / "bad.toml").write_text('kl_lambda = -1\n')
    assert main(["--config", str(tmp_path / "bad.toml"), "--results-dir", str(tmp_path / "r2")]) == 2
    assert "--kl-lambda: bad value -1" in capsys.readouterr().err and not (tmp_path / "r2").exists()


def test_the_notebook_api_runs_and_loads_with_the_clis_run_id(tmp_path):
    import forgetting

    rows = forgetting.run(method="kl", kl_lambda=0.5, epochs=1, hidden=[16], results_dir=tmp_path)
    assert rows.attrs["status"] == "complete" and rows["accuracy"].notna().all()
    assert rows.attrs["run_id"] == make_config(kl_lambda=0.5, epochs=1, hidden=[16]).run_id
    again = forgetting.run(method="kl", kl_lambda=0.5, epochs=1, hidden=[16], results_dir=tmp_path)
    assert again.attrs["status"] == "skipped" and again.equals(rows)
    forgetting.run(method="naive", epochs=1, hidden=[16], results_dir=tmp_path)
    df = forgetting.load_results(tmp_path)
    assert set(df["method"]) == {"kl", "naive"} and set(df["status"]) == {"complete"}
    assert set(df.loc[df["method"] == "kl", "method.kl_lambda"]) == {0.5}
    assert df.loc[df["method"] == "naive", "method.kl_lambda"].isna().all()
    assert set(df["model.hidden"]) == {(16,)}
    with pytest.raises(BadInput, match="--five-order does not apply"):
        forgetting.run(five_order=2, results_dir=tmp_path)


def test_a_suite_seed_beyond_numpys_range_is_refused_before_any_run(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text('[[experiment]]\nbenchmark = "split-digits"\nscenarios = ["domain"]\nseeds = [99999999999]\n'
                     'epochs = 1\n[[experiment.method]]\nname = "kl"\n')
    with pytest.raises(BadInput, match=r"seeds\[0\]: bad value 99999999999, allowed: an integer at least 0 and at "
                                       r"most 4294967295"):
        load_suite(suite)
