"""The benchmarks' shared command line: a bad number is refused by argparse, naming its option."""

import argparse
import math
import re
from pathlib import Path

import pytest

from benchmarks.common import base_parser, fraction, input_table, non_negative_int, output_file, positive_float


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


def test_an_output_file_is_checked_before_any_run(tmp_path):
    assert output_file(str(tmp_path / "new" / "table.csv")) == tmp_path / "new" / "table.csv"
    assert (tmp_path / "new").is_dir()  # made now, not once the runs are done
    (tmp_path / "a-file").write_text("")
    for bad in (str(tmp_path), str(tmp_path / "a-file" / "table.csv"), "/proc/fl-dp-no/table.csv"):
        with pytest.raises(argparse.ArgumentTypeError):
            output_file(bad)


def test_an_input_table_is_checked_before_any_run(tmp_path):
    from benchmarks.error_compensation import RUN_COLUMNS

    docs = Path(__file__).parents[1] / "docs" / "results"
    for table in ("privacy_utility.csv", "error_compensation.csv"):  # the tables these options are given
        assert input_table(*RUN_COLUMNS)(str(docs / table)) == docs / table
    assert input_table("strategy", "rounds", "setting")(str(docs / "privacy_utility_best.csv"))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.csv").write_text("")
    for bad, reason in (("other.csv", "lacks the column(s) strategy, rounds"), ("empty.csv", "cannot be read as a CSV"),
                        ("missing.csv", "cannot be read as a CSV (FileNotFoundError"), (".", "cannot be read as a CSV")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(reason)):
            input_table("strategy", "rounds")(str(tmp_path / bad))


OUT = "/proc/fl-dp-no/table.csv"


@pytest.mark.parametrize("argv, message", [
    # numpy's generators refused a negative seed with a traceback, once the benchmark had started
    *[([module, "--seed", "-1"], "argument --seed: '-1' is not a whole number >= 0") for module in ("privacy_audit", "secagg_dropouts")],
    # an output that cannot be written failed once the first runs were done
    *[([module, "--out", OUT], f"argument --out: '{OUT}': its folder cannot be made")
      for module in ("deployment_rounds", "error_compensation", "privacy_audit", "privacy_utility", "secagg_dropouts",
                     "secagg_round_time", "secagg_survivors")],
    # an input table was read only after the grid was built
    (["privacy_utility", "--best-of", "/no/such.csv"], "argument --best-of: '/no/such.csv' cannot be read as a CSV"),
    (["error_compensation", "--reuse", "/no/such.csv"], "argument --reuse: '/no/such.csv' cannot be read as a CSV"),
    (["error_compensation", "--phase", "confirm", "--grid-csv", "/no/such.csv"], "argument --grid-csv: '/no/such.csv' cannot be read"),
    # signs --quick ignored --datasets, and failed at its first run otherwise; ef21_sgdm raised a traceback
    (["signs", "--datasets", "mnist", "nope"], "argument --datasets: invalid choice: 'nope'"),
    (["ef21_sgdm", "--dataset", "nope"], "argument --dataset: invalid choice: 'nope'"),
])
def test_a_benchmarks_bad_option_is_refused_naming_it_before_it_runs(argv, message, monkeypatch, capsys):
    import importlib

    main = importlib.import_module(f"benchmarks.{argv[0]}").main
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
