"""The command line: one-line errors with exit code 2, and the commands a user runs first."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TINY_IMAGE_SOURCE

from transferkit.cli import main


def run_cli(args, capsys):
    """(exit code, stdout, stderr) of ``transferkit ARGS`` run in this process."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, message", [
    (["fit", "{data}", "--source", "mobilenetv2"], "Unknown source 'mobilenetv2'. Did you mean 'mobilenet_v2'?"),
    (["fit", "{data}", "--strategy", "linear-probe"], "Unknown strategy 'linear-probe'. Did you mean 'linear_probe'?"),
    (["fit", "{data}", "--lr", "-1"], "`--lr` must be in (0, 10]; got -1.0."),
    (["fit", "{data}", "--epochs", "0"], "`--epochs` must be a whole number >= 1; got 0."),
    (["fit", "{data}", "--precision", "fp8"], "`--precision` must be one of no, bf16, fp16; got 'fp8'."),
    (["fit", "/no/such/folder"], "does not exist"),
    (["fit", "{data}", "--source", "minilm"], "takes text inputs but the data is image"),
    (["predict", "/no/such/run", "x.png"], "is not a transferkit run directory"),
])
def test_bad_input_exits_2_with_one_line(args, message, capsys, image_folder):
    code, out, err = run_cli([a.replace("{data}", str(image_folder)) for a in args], capsys)
    assert code == 2
    assert message in err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys, image_folder):
    from transferkit.errors import UnknownNameError

    with pytest.raises(UnknownNameError):
        main(["--debug", "fit", str(image_folder), "--source", "mobilenetv2"])


def test_unknown_config_key_is_named(tmp_path, capsys, image_folder):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlearning_rate: 0.1\n")
    code, _, err = run_cli(["fit", str(image_folder), "--config", str(cfg)], capsys)
    assert code == 2 and "Unknown option 'learning_rate'" in err


def test_sources_and_strategies_list(capsys):
    code, out, _ = run_cli(["sources"], capsys)
    assert code == 0
    for name in ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm"):
        assert name in out
    code, out, _ = run_cli(["strategies"], capsys)
    assert code == 0 and "linear_probe" in out and "full" in out


def test_fit_then_predict_writes_probabilities(tmp_path, capsys, image_folder):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["fit", str(image_folder), "--source", TINY_IMAGE_SOURCE, "--out", str(out),
                               "--epochs", "1", "--probe-epochs", "3", "--image-size", "32", "--baseline", "none",
                               "--quiet"], capsys)
    assert code == 0 and "test accuracy" in stdout
    preds = tmp_path / "p.csv"
    code, stdout, _ = run_cli(["predict", str(out), str(image_folder / "0"), "--output", str(preds)], capsys)
    lines = preds.read_text().splitlines()
    assert lines[0] == "input,prediction,p_0,p_1,p_2,p_3"
    assert len(lines) == 1 + 12 and "examples/s" in stdout
    probs = [sum(map(float, line.split(",")[2:])) for line in lines[1:]]
    assert all(abs(p - 1) < 1e-4 for p in probs)


def test_help_does_not_import_torch():
    code = ("import sys; from transferkit.cli import app; "
            "assert 'torch' not in sys.modules, 'the CLI imported torch at start'")
    subprocess.run([sys.executable, "-c", code], check=True)
