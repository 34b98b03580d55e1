"""Shared pytest fixtures."""
import pytest

from fixture_results import make_results


@pytest.fixture(scope="session")
def results_folder(tmp_path_factory):
    """A synthetic, complete results folder (see tests/fixture_results.py); treat it as read-only."""
    return make_results(tmp_path_factory.mktemp("results") / "fixture-run")
