"""The benchmarks' shared command line: a bad number is refused by argparse, naming its option."""

import argparse
import math

import pytest

from benchmarks.common import base_parser, fraction, non_negative_int, positive_float


@pytest.mark.parametrize("option, value", [
    ("--seeds", "0"), ("--seeds", "-2"), ("--seeds", "1.5"), ("--rounds", "0"), ("--workers", "0"), ("--workers", "two"),
])
def test_a_count_below_one_or_not_whole_is_refused_naming_its_option(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        base_parser("test").parse_args([option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: {value!r} is not a whole number >= 1" in capsys.readouterr().err


def test_good_counts_pass():
    args = base_parser("test").parse_args(["--seeds", "3", "--rounds", "7", "--workers", "1"])
    assert (args.seeds, args.rounds, args.workers) == (3, 7, 1)


@pytest.mark.parametrize("check, good, bad", [
    (non_negative_int, {"0": 0, "8000": 8000}, ["-1", "0.5"]),
    (positive_float, {"1e-3": 1e-3, "8": 8.0, "inf": math.inf}, ["0", "-1", "nan", "x"]),
    (fraction, {"0.5": 0.5, "1": 1.0}, ["0", "1.5", "nan"]),
])
def test_value_types(check, good, bad):
    assert {text: check(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            check(text)


@pytest.mark.parametrize("module", ["privacy_audit", "secagg_dropouts"])
def test_a_benchmarks_negative_seed_is_refused_naming_the_option(module, monkeypatch, capsys):
    """numpy's generators refuse a negative seed: with a traceback, once the benchmark had started."""
    import importlib

    main = importlib.import_module(f"benchmarks.{module}").main
    monkeypatch.setattr("sys.argv", [module, "--seed", "-1"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "argument --seed: '-1' is not a whole number >= 0" in capsys.readouterr().err
