"""The generated tables of README.md and docs/ match the registry and the committed CSVs."""

from benchmarks import docs


def test_every_generated_table_is_up_to_date():
    stale = [page.name for page in docs.pages() if docs.regenerate(page.read_text()) != page.read_text()]
    assert not stale, f"run `python -m benchmarks.docs`: {stale}"


def test_an_unknown_generated_table_is_an_error():
    import pytest

    with pytest.raises(KeyError, match="unknown generated table"):
        docs.regenerate("<!-- generated: no-such-table -->\n<!-- /generated -->")
