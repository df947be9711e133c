"""The conformance suite's own test: it fails each deliberately broken backend, by name."""

from __future__ import annotations

import pytest

from strongroom.testing import StoreConformance
from tests import broken_backends

pytest_plugins = ["pytester"]

#: The suite's tests that must fail for each broken backend (others may fail too).
CAUGHT_BY = {
    "ListNotSorted": {"test_list_is_recursive_sorted_and_sized"},
    "ListNotRecursive": {"test_list_is_recursive_sorted_and_sized"},
    "NaiveTimes": {"test_listed_times_are_the_stores_own_and_timezone_aware"},
    "NoTimes": {"test_listed_times_are_the_stores_own_and_timezone_aware"},
    "OneDatabasePerProcess": {"test_a_persistent_store_keeps_objects_for_another_process"},
    "PartialWritesVisible": {"test_readers_never_see_a_partial_object"},
    "RacyPutIfAbsent": {
        "test_racing_creates_have_exactly_one_winner",
        "test_racing_creates_from_two_instances",
        "test_racing_creates_from_two_processes",
    },
    "PrefixExists": {"test_exists_is_true_exactly_for_stored_keys"},
    "DeleteNotIdempotent": {"test_delete_is_idempotent_and_prefix_delete_is_complete"},
    "UntranslatedErrors": {
        "test_storage_exceptions_become_store_errors",
        "test_an_unreachable_store_raises_store_errors",
    },
}

SUITE = """
import tests.test_sqlite_store as sqlite
from tests import broken_backends

class TestBroken(sqlite.TestSQLiteStore):
    backend = broken_backends.{name}
"""


def test_every_broken_backend_is_checked() -> None:
    assert set(CAUGHT_BY) == set(broken_backends.__all__)


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_the_suite_fails_a_broken_backend(pytester: pytest.Pytester, name: str) -> None:
    pytester.makepyfile(test_broken=SUITE.format(name=name))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    failed = {report.nodeid.rsplit("::", 1)[1] for report in result.reprec.getfailures()}
    missed = CAUGHT_BY[name] - failed
    assert not missed, f"the suite passed {name} on {sorted(missed)}"


def test_the_harness_passes_the_correct_backend(pytester: pytest.Pytester) -> None:
    """So the failures above are the broken backends', not the harness's."""
    pytester.makepyfile(test_broken=SUITE.replace("broken_backends.{name}", "sqlite.SQLiteStore"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=sum(name.startswith("test_") for name in dir(StoreConformance)))


def test_a_store_fixture_that_is_not_fresh_fails_every_later_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_shared="""
import pytest
from strongroom.testing import StoreConformance
from tests.sqlite_store import SQLiteStore

class TestShared(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path_factory):
        database = tmp_path_factory.getbasetemp() / "shared.db"
        return SQLiteStore("shared", database.as_uri(), database)
"""
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-x")
    result.stdout.fnmatch_lines(["*the 'store' fixture must return an empty store*"])
