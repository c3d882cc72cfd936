"""benchmarks/deployment_rounds: its round periods and summary (the deployments themselves are in
tests/test_deployment.py)."""

import pandas as pd
import pytest

from benchmarks.deployment_rounds import round_periods, summary


def test_round_periods_are_the_gaps_between_progress_lines(tmp_path):
    log = tmp_path / "flower.log"
    log.write_text(
        "2026-12-02 07:31:00,000 DEBUG fl_dp: round 1/3: round=1\n"
        "2026-12-02 07:31:00,100 INFO fl_dp: round 1/3: acc 0.1\n"
        "2026-12-02 07:31:00,900 INFO fl_dp: something else\n"
        "2026-12-02 07:31:01,000 INFO fl_dp: round 2/3: acc 0.2\n"
        "2026-12-02 07:31:03,250 INFO fl_dp: round 3/3: acc 0.3\n"
    )
    assert round_periods(log) == pytest.approx([0.9, 2.25])


def test_summary_gives_medians_and_flowers_own_over_ours():
    rows = [
        {"configuration": c, "round_seconds": r, "round_period_seconds": p, "first_round_seconds": 4.0, "run_seconds": 30.0}
        for c, r, p in [
            ("fl-dp runtime", 0.5, 1.0),
            ("flower's own", 5.0, 6.0),
            ("fl-dp runtime", 0.7, 3.0),
            ("flower's own", 7.0, 6.0),
        ]
    ]
    table = summary(pd.DataFrame(rows)).set_index("configuration")
    assert table.loc["fl-dp runtime", "round_period_seconds"] == 2.0
    assert table.loc["flower's own / fl-dp runtime", "round_seconds"] == pytest.approx(6.0 / 0.6)
    assert list(table["period <= 2 s"]) == ["True", "False", ""]
