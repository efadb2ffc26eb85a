"""Bad input to `python -m forgetting.run`: exit code 2, one line naming the value, no results left."""

import gzip
import struct

import pytest

from forgetting.run import main


def idx_bytes(magic: int, dims: list[int], payload: bytes | None = None) -> bytes:
    n = 1
    for d in dims:
        n *= d
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + (payload if payload is not None else bytes(n))


def write_mnist(folder, images: bytes, labels: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def bad_magic(tmp):
    write_mnist(tmp / "data" / "mnist", idx_bytes(0x0803, [10, 28, 28]), idx_bytes(0x0804, [10]))
    return ["--benchmark", "split-mnist", "--data-dir", str(tmp / "data")], "0x00000804"


def truncated(tmp):
    write_mnist(tmp / "data" / "mnist", idx_bytes(0x0803, [10, 28, 28], bytes(100)), idx_bytes(0x0801, [10]))
    return ["--benchmark", "split-mnist", "--data-dir", str(tmp / "data")], "t10k-images"


def not_gzip(tmp):
    d = tmp / "data" / "mnist"
    d.mkdir(parents=True)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(b"nor this")
    return ["--benchmark", "split-mnist", "--data-dir", str(tmp / "data")], "t10k-images"


def empty_dir(tmp):
    (tmp / "data").mkdir()
    return ["--benchmark", "split-mnist", "--data-dir", str(tmp / "data")], "no MNIST IDX files"


CASES = {
    "unknown benchmark": (["--benchmark", "split-cifar"], "split-cifar"),
    "unknown scenario": (["--scenario", "instance"], "instance"),
    "unknown direction": (["--kl-direction", "backward"], "backward"),
    "negative lambda": (["--kl-lambda", "-0.5"], "-0.5"),
    "nan lambda": (["--kl-lambda", "nan"], "nan"),
    "infinite lambda": (["--kl-lambda", "inf"], "inf"),
    "text lambda": (["--kl-lambda", "lots"], "lots"),
    "zero temperature": (["--temperature", "0"], "'0'"),
    "negative temperature": (["--temperature", "-1"], "-1"),
    "zero epochs": (["--epochs", "0"], "'0'"),
    "fractional epochs": (["--epochs", "1.5"], "1.5"),
    "zero batch size": (["--batch-size", "0"], "'0'"),
    "unknown method": (["--method", "magic"], "magic"),
    "option of another method": (["--method", "naive", "--kl-lambda", "1"], "--kl-lambda"),
    "unknown device": (["--device", "tpu"], "tpu"),
    "missing data dir": (["--benchmark", "split-mnist", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    "unknown flag": (["--kl-lambdaa", "1"], "--kl-lambdaa"),
}
def labels_out_of_range(tmp):
    write_mnist(tmp / "data" / "mnist", idx_bytes(0x0803, [10, 28, 28]), idx_bytes(0x0801, [10], bytes([12] * 10)))
    return ["--benchmark", "split-mnist", "--data-dir", str(tmp / "data")], "label 12"


def text_file(name: str, content: bytes, needle: str):
    """A --text-file case: the file's content and what the one line must say."""
    def case(tmp):
        path = tmp / name
        path.write_bytes(content)
        return ["--benchmark", "text-file", "--model", "bert", "--text-file", str(path)], needle.format(path=path)
    return case


TEXT_FILE_CASES = {
    "empty csv": text_file("d.csv", b"", "{path}' is empty"),
    "header-only csv": text_file("d.csv", b"task,text,label\n", "{path}' has a header line but no rows"),
    "invalid utf-8": text_file("d.csv", b"task,text,label\na,fine,pos\na,caf\xe9,neg\n", "{path}' line 3: not UTF-8"),
    "broken json line": text_file("d.jsonl", b'{"task": "a", "text": "x", "label": "p"}\n{"task": "a", "text"\n',
                                  "{path}' line 2: not valid JSON"),
    "empty jsonl": text_file("d.jsonl", b"\n", "{path}' is empty"),
}
FILE_CASES = {"bad magic": bad_magic, "truncated images": truncated, "not gzip": not_gzip, "empty data dir": empty_dir,
              "labels out of range": labels_out_of_range, **TEXT_FILE_CASES}


def check_rejected(argv, needle, tmp_path, capsys):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main([*argv, "--results-dir", str(results), "--quiet"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not results.exists(), "a rejected run left a results directory"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_cli_value(name, tmp_path, capsys):
    argv, needle = CASES[name]
    check_rejected(argv, needle, tmp_path, capsys)


@pytest.mark.parametrize("name", list(FILE_CASES))
def test_bad_data_files(name, tmp_path, capsys):
    argv, needle = FILE_CASES[name](tmp_path)
    check_rejected(argv, needle, tmp_path, capsys)


def test_results_dir_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(["--results-dir", str(blocker / "results"), "--quiet"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a-file" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"


def test_bad_input_in_a_real_process(tmp_path, cli):
    p = cli("forgetting.run", "--kl-lambda", "-1", "--results-dir", str(tmp_path / "r"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "-1" in p.stderr
    assert not (tmp_path / "r").exists()


def test_help_explains_every_option(cli):
    p = cli("forgetting.run", "--help")
    assert p.returncode == 0
    for flag in ["--benchmark", "--scenario", "--kl-lambda", "--kl-direction", "--temperature", "--epochs",
                 "--batch-size", "--lr", "--seed", "--results-dir", "--data-dir", "--device", "--eval-every"]:
        assert flag in p.stdout, flag
    # options grouped per component, and every choice listed
    for group in ("stream (what to learn):", "model:", "method:", "loop:", "output:"):
        assert f"\n{group}\n" in p.stdout, group
    assert "--scenario {task,domain,class}" in p.stdout


def test_every_command_has_version_and_help_lists_choices(capsys):
    from forgetting import __version__
    from forgetting.plot import main as plot_main
    from forgetting.sweep import main as sweep_main

    for command in (main, sweep_main, plot_main):
        with pytest.raises(SystemExit) as exc:
            command(["--version"])
        assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"forgetting {__version__}"
    with pytest.raises(SystemExit):
        sweep_main(["--help"])
    out = capsys.readouterr().out
    assert "--executor {process,ray,slurm}" in out
    with pytest.raises(SystemExit):
        plot_main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "95%" in out and "95%%" not in out
    for choice in ("--width {column,page}", "--style {paper,notebook,talk,poster}", "--bands, --no-bands",
                   "--methods LIST", "--tasks LIST", "--formats LIST"):
        assert choice in out, choice
